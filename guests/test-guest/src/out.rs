//! A tiny formatter without `core::fmt`: strings, bytes, hex and decimal numbers, chained.
//!
//! `con().s("fact: x=").hex(v).nl()` writes to COM1; tests format into a buffer instead.

/// Where formatted bytes go.
pub trait Sink {
    fn put(&mut self, b: u8);
}

/// A chaining formatter over a [`Sink`].
pub struct Out<S: Sink>(pub S);

impl<S: Sink> Out<S> {
    /// A string, as is.
    pub fn s(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            self.0.put(b);
        }
        self
    }

    /// Raw bytes from the guest (command line, table signatures): printable ASCII as is,
    /// anything else as `?` so a hostile table cannot corrupt the output lines.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0.put(if (0x20..0x7f).contains(&b) { b } else { b'?' });
        }
        self
    }

    /// `0x` followed by the shortest lowercase hex form.
    pub fn hex(&mut self, v: u64) -> &mut Self {
        self.s("0x");
        let digits = if v == 0 {
            1
        } else {
            (67 - v.leading_zeros() as usize) / 4
        };
        for i in (0..digits).rev() {
            self.0.put(hex_digit((v >> (i * 4)) as u8 & 0xf));
        }
        self
    }

    /// Unsigned decimal.
    pub fn dec(&mut self, v: u64) -> &mut Self {
        self.dec_width(v, 1)
    }

    /// Unsigned decimal, zero-padded to at least `width` digits.
    pub fn dec_width(&mut self, mut v: u64, width: usize) -> &mut Self {
        let mut buf = [0u8; 20];
        let mut n = 0;
        while v > 0 || n < width.max(1) {
            if n == buf.len() {
                break;
            }
            buf[n] = b'0' + (v % 10) as u8;
            v /= 10;
            n += 1;
        }
        for &b in buf[..n].iter().rev() {
            self.0.put(b);
        }
        self
    }

    /// End of line (`\r\n`, as a serial console expects).
    pub fn nl(&mut self) -> &mut Self {
        self.0.put(b'\r');
        self.0.put(b'\n');
        self
    }
}

fn hex_digit(d: u8) -> u8 {
    if d < 10 {
        b'0' + d
    } else {
        b'a' + d - 10
    }
}

/// COM1 (16550 at 0x3f8): waits for THR empty (LSR bit 5) before each byte.
pub struct Serial;

const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;

impl Sink for Serial {
    fn put(&mut self, b: u8) {
        // Bounded wait: a VMM that never reports THR empty must not hang the guest forever.
        for _ in 0..1_000_000 {
            if crate::io::inb(LSR) & LSR_THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        crate::io::outb(COM1, b);
    }
}

/// A formatter on the serial console.
pub fn con() -> Out<Serial> {
    Out(Serial)
}

/// Starts a `fact: KEY=` line; finish it with a value and `.nl()`.
pub fn fact(key: &str) -> Out<Serial> {
    let mut o = con();
    o.s("fact: ").s(key).s("=");
    o
}

/// A fixed-size buffer sink (for tests and for building values before printing).
pub struct Buf<const N: usize> {
    pub data: [u8; N],
    pub len: usize,
}

impl<const N: usize> Buf<N> {
    pub const fn new() -> Self {
        Self {
            data: [0; N],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl<const N: usize> Default for Buf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Sink for Buf<N> {
    fn put(&mut self, b: u8) {
        if self.len < N {
            self.data[self.len] = b;
            self.len += 1;
        }
    }
}

impl<const N: usize> Sink for &mut Buf<N> {
    fn put(&mut self, b: u8) {
        (**self).put(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(f: impl FnOnce(&mut Out<Buf<64>>)) -> String {
        let mut o = Out(Buf::<64>::new());
        f(&mut o);
        String::from_utf8(o.0.as_bytes().to_vec()).expect("ascii")
    }

    #[test]
    fn hex_is_shortest_lowercase() {
        assert_eq!(
            fmt(|o| {
                o.hex(0);
            }),
            "0x0"
        );
        assert_eq!(
            fmt(|o| {
                o.hex(0xfee0_0000);
            }),
            "0xfee00000"
        );
        assert_eq!(
            fmt(|o| {
                o.hex(u64::MAX);
            }),
            "0xffffffffffffffff"
        );
        assert_eq!(
            fmt(|o| {
                o.hex(0x10);
            }),
            "0x10"
        );
    }

    #[test]
    fn decimal_and_padding() {
        assert_eq!(
            fmt(|o| {
                o.dec(0);
            }),
            "0"
        );
        assert_eq!(
            fmt(|o| {
                o.dec(u64::MAX);
            }),
            "18446744073709551615"
        );
        assert_eq!(
            fmt(|o| {
                o.dec_width(7, 2);
            }),
            "07"
        );
        assert_eq!(
            fmt(|o| {
                o.dec_width(2025, 4);
            }),
            "2025"
        );
    }

    #[test]
    fn bytes_are_sanitized() {
        assert_eq!(
            fmt(|o| {
                o.bytes(b"ok\n\xff");
            }),
            "ok??"
        );
    }

    #[test]
    fn buffer_truncates_instead_of_overflowing() {
        let mut o = Out(Buf::<4>::new());
        o.s("abcdef");
        assert_eq!(o.0.as_bytes(), b"abcd");
    }
}
