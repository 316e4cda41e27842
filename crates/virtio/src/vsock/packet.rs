//! vsock packet headers as plain values (the `virtio-vsock` crate parses the rings).

use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the peer will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// One packet header, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    /// The header of a packet the guest sent.
    pub fn from_packet<B: BitmapSlice>(p: &VsockPacket<'_, B>) -> Self {
        Hdr {
            src_cid: p.src_cid(),
            dst_cid: p.dst_cid(),
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            len: p.len(),
            type_: p.type_(),
            op: p.op(),
            flags: p.flags(),
            buf_alloc: p.buf_alloc(),
            fwd_cnt: p.fwd_cnt(),
        }
    }

    /// Writes every field into a packet for the guest.
    pub fn write_to<B: BitmapSlice>(&self, p: &mut VsockPacket<'_, B>) {
        p.set_src_cid(self.src_cid)
            .set_dst_cid(self.dst_cid)
            .set_src_port(self.src_port)
            .set_dst_port(self.dst_port)
            .set_len(self.len)
            .set_type(self.type_)
            .set_op(self.op)
            .set_flags(self.flags)
            .set_buf_alloc(self.buf_alloc)
            .set_fwd_cnt(self.fwd_cnt);
    }
}
