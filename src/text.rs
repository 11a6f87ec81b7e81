//! Pure: text from a message made safe to store, log and show.
//!
//! Every header value, address and file name that reaches the case log, a
//! log line, a reply or the legal team's screen goes through [`clean`]
//! first, so a sender cannot inject header lines, reorder what a reader
//! sees with bidi controls, or hide text in invisible characters.

/// Makes header text safe to store, log and copy into a reply: control
/// characters (CR and LF included) become spaces, Unicode bidi and
/// invisible formatting characters are dropped, whitespace runs collapse,
/// and the result is cut to `max` characters.
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    let mut kept = 0;
    let mut last_space = true;
    for c in s.chars() {
        if kept >= max {
            break;
        }
        let c = if c.is_control() { ' ' } else { c };
        if is_format_char(c) {
            continue;
        }
        if c.is_whitespace() {
            if last_space {
                continue;
            }
            out.push(' ');
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
        kept += 1;
    }
    out.trim_end().to_string()
}

/// Bidirectional controls, zero-width and other invisible format
/// characters (Unicode category Cf in the ranges that matter for display
/// spoofing).
pub fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2069}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, max: usize, expected: &str) {
        assert_eq!(clean(input, max), expected, "{input:?} cut to {max}");
    }

    #[test]
    fn header_text_is_cleaned() {
        check("a\r\nBcc: x\u{202E}y\u{200B}", 100, "a Bcc: xy");
        check("abcdef", 3, "abc");
        check(
            "  lead and   runs\t\tof space  ",
            100,
            "lead and runs of space",
        );
        // The cut counts characters, not bytes, and never splits one.
        check("\u{e9}\u{e9}\u{e9}\u{e9}", 2, "\u{e9}\u{e9}");
        // Dropped characters do not count towards the cut.
        check("a\u{200B}\u{200B}\u{200B}bc", 2, "ab");
    }

    #[test]
    fn a_long_value_is_cut_in_one_pass() {
        let long = "x".repeat(1 << 20);
        assert_eq!(clean(&long, 998).len(), 998);
    }
}
