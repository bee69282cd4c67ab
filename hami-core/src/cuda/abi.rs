//! The slice of the CUDA driver ABI hami-core touches (see fake-drivers/cuda_abi.h).

#![allow(non_camel_case_types)]

use std::ffi::c_void;

pub type CUresult = i32;
pub type CUdevice = i32;
pub type CUdeviceptr = u64;
pub type CUstream = *mut c_void;
pub type CUmemoryPool = *mut c_void;
pub type CUarray = *mut c_void;
pub type CUmipmappedArray = *mut c_void;
pub type CUmemGenericAllocationHandle = u64;
pub type CUfunction = *mut c_void;
pub type CUcontext = *mut c_void;
pub type CUgraphExec = *mut c_void;

/// `CUlaunchConfig`: the grid is all the limiter needs.
#[repr(C)]
pub struct CUlaunchConfig {
    pub grid_dim_x: u32,
    pub grid_dim_y: u32,
    pub grid_dim_z: u32,
    pub block_dim_x: u32,
    pub block_dim_y: u32,
    pub block_dim_z: u32,
    pub shared_mem_bytes: u32,
    pub h_stream: CUstream,
    pub attrs: *mut c_void,
    pub num_attrs: u32,
}

pub const CUDA_SUCCESS: CUresult = 0;
pub const CUDA_ERROR_INVALID_VALUE: CUresult = 1;
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;

/// `CUmemAllocationProp`: only `location` matters to us.
#[repr(C)]
pub struct CUmemAllocationProp {
    pub kind: i32,
    pub requested_handle_types: i32,
    pub location_type: i32,
    pub location_id: i32,
    pub win32_handle_meta_data: *mut c_void,
    pub alloc_flags: [u8; 8],
}
pub const CU_MEM_LOCATION_TYPE_DEVICE: i32 = 1;

#[repr(C)]
pub struct CUDA_ARRAY_DESCRIPTOR {
    pub width: usize,
    pub height: usize,
    pub format: i32,
    pub num_channels: u32,
}

#[repr(C)]
pub struct CUDA_ARRAY3D_DESCRIPTOR {
    pub width: usize,
    pub height: usize,
    pub depth: usize,
    pub format: i32,
    pub num_channels: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUipcMemHandle {
    pub reserved: [u8; 64],
}

/// Bytes per channel element of a `CUarray_format`.
pub fn format_bytes(format: i32) -> u64 {
    match format {
        0x01 | 0x08 => 1,        // UNSIGNED_INT8, SIGNED_INT8
        0x02 | 0x09 | 0x10 => 2, // UNSIGNED_INT16, SIGNED_INT16, HALF
        _ => 4, // 32-bit integers and FLOAT; wider formats are charged as 4 per channel
    }
}

/// Device bytes an array occupies: width × height × depth × channels × element size.
pub fn array_bytes(width: usize, height: usize, depth: usize, channels: u32, format: i32) -> u64 {
    (width as u64)
        .saturating_mul(height.max(1) as u64)
        .saturating_mul(depth.max(1) as u64)
        .saturating_mul(u64::from(channels))
        .saturating_mul(format_bytes(format))
}
