//! The guest command line: `test=NAME` picks the payload (default `hello`).

/// The value of the first `test=` word, or `hello`.
pub fn test_name(cmdline: &[u8]) -> &[u8] {
    param(cmdline, b"test").unwrap_or(b"hello")
}

/// The value of the first `key=value` word with this key.
pub fn param<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    cmdline
        .split(|&b| b == b' ' || b == b'\t' || b == b'\n')
        .find_map(|word| {
            let rest = word.strip_prefix(key)?;
            rest.strip_prefix(b"=")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_test_name_among_other_words() {
        assert_eq!(test_name(b"console=ttyS0 test=acpi quiet"), b"acpi");
        assert_eq!(test_name(b"test=rtc"), b"rtc");
    }

    #[test]
    fn defaults_to_hello() {
        assert_eq!(test_name(b""), b"hello");
        assert_eq!(test_name(b"testing=1 xtest=2"), b"hello");
    }
}
