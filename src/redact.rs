//! Blanking codes out of provider texts.
//!
//! A provider may echo the message it was given in an error or reference
//! ("template param 091 616 rejected"). Before such a text is stored, every
//! group of six digits that could be the message's code is replaced by
//! `[code]`. The code is recognised by its keyed hash (`is_code`), so the
//! scan works after the code itself was erased.
//!
//! What counts as written digits: the decimal digits of the scripts people
//! type codes in (ASCII, fullwidth, Arabic-Indic, Persian, Devanagari and the
//! other Indic scripts, Thai, Lao, Tibetan, Myanmar, Khmer, Mongolian and the
//! mathematical digits), superscript, subscript and circled digits, with up
//! to `MAX_GAP` separators (spaces of any kind, hyphens and dashes, dots,
//! underscores) between two digits, and invisible formatting characters
//! (zero-width spaces and joiners, soft hyphens, direction marks) anywhere:
//! "091 616", "09-16-16", "0 9 1 6 1 6", "０９１６１６", "0\u{200B}91616".
//!
//! This catches a provider echoing the code, however it formats it. It is
//! not a barrier against a dispatcher that wants to store the code (it
//! could spell it in words): the dispatcher is trusted with codes anyway.

use crate::crypto::CODE_DIGITS;

/// Separator characters allowed between two digits of one group.
const MAX_GAP: usize = 4;

/// The first code point (the digit zero) of each run of ten decimal digits
/// recognised, in the Unicode order of their blocks.
const DIGIT_ZEROS: &[u32] = &[
    0x0030, // ASCII
    0x0660, // Arabic-Indic
    0x06F0, // Extended Arabic-Indic (Persian, Urdu)
    0x07C0, // NKo
    0x0966, // Devanagari
    0x09E6, // Bengali
    0x0A66, // Gurmukhi
    0x0AE6, // Gujarati
    0x0B66, // Oriya
    0x0BE6, // Tamil
    0x0C66, // Telugu
    0x0CE6, // Kannada
    0x0D66, // Malayalam
    0x0DE6, // Sinhala Lith
    0x0E50, // Thai
    0x0ED0, // Lao
    0x0F20, // Tibetan
    0x1040, // Myanmar
    0x1090, // Myanmar Shan
    0x17E0, // Khmer
    0x1810, // Mongolian
    0xFF10, // Fullwidth
    0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, // Mathematical digits
];

/// The value of a decimal digit in any of the recognised scripts.
fn digit_value(c: char) -> Option<u8> {
    let point = u32::from(c);
    let decimal = DIGIT_ZEROS
        .iter()
        .find(|&&zero| (zero..zero + 10).contains(&point))
        .map(|&zero| (point - zero) as u8);
    decimal.or(match c {
        '\u{2070}' | '\u{2080}' | '\u{24EA}' => Some(0), // ⁰ ₀ ⓪
        '\u{00B9}' => Some(1),                           // ¹
        '\u{00B2}' => Some(2),                           // ²
        '\u{00B3}' => Some(3),                           // ³
        '\u{2074}'..='\u{2079}' => Some((point - 0x2070) as u8), // ⁴ to ⁹
        '\u{2081}'..='\u{2089}' => Some((point - 0x2080) as u8), // ₁ to ₉
        '\u{2460}'..='\u{2468}' => Some((point - 0x245F) as u8), // ① to ⑨
        _ => None,
    })
}

/// Invisible formatting characters, skipped wherever they are.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}'
    )
}

fn is_separator(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '-' | '.' | '_' | '\u{00B7}' | '\u{2010}'
                ..='\u{2015}' | '\u{2212}' | '\u{FF0D}' | '\u{30FC}'
        )
}

/// A digit found in the text: its value and where it is.
struct Digit {
    value: u8,
    start: usize,
    end: usize,
}

/// `text` with every group of six digits (see the module comment) for which
/// `is_code` holds replaced by `[code]`. `is_code` is given the six digits as
/// ASCII. Windows inside longer groups count too, so a code is found even
/// when glued to other digits.
pub fn codes(text: &str, mut is_code: impl FnMut(&str) -> bool) -> String {
    // Groups of digits joined by short runs of separators.
    let mut groups: Vec<Vec<Digit>> = Vec::new();
    let mut current: Vec<Digit> = Vec::new();
    let mut gap = 0;
    for (start, c) in text.char_indices() {
        if is_invisible(c) {
            continue;
        }
        if let Some(value) = digit_value(c) {
            current.push(Digit {
                value,
                start,
                end: start + c.len_utf8(),
            });
            gap = 0;
        } else if is_separator(c) && !current.is_empty() && gap < MAX_GAP {
            gap += 1;
        } else if !current.is_empty() {
            groups.push(std::mem::take(&mut current));
        }
    }
    groups.push(current);

    // Byte ranges to blank, in order and not overlapping.
    let mut blanked: Vec<(usize, usize)> = Vec::new();
    for group in &groups {
        let mut at = 0;
        while at + CODE_DIGITS <= group.len() {
            let window = &group[at..at + CODE_DIGITS];
            let ascii: String = window.iter().map(|d| char::from(b'0' + d.value)).collect();
            if is_code(&ascii) {
                blanked.push((window[0].start, window[CODE_DIGITS - 1].end));
                at += CODE_DIGITS;
            } else {
                at += 1;
            }
        }
    }

    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end) in blanked {
        out.push_str(&text[copied..start]);
        out.push_str("[code]");
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn only_091616(text: &str) -> String {
        codes(text, |w| w == "091616")
    }

    #[test]
    fn finds_the_code_anywhere_and_nothing_else() {
        assert_eq!(
            only_091616("code 091616 rejected (131026), ref 1091616x"),
            "code [code] rejected (131026), ref 1[code]x"
        );
        assert_eq!(only_091616("ñandú 091616"), "ñandú [code]");
        assert_eq!(only_091616("09161"), "09161");
        assert_eq!(only_091616(""), "");
        assert_eq!(codes("091616 123456", |_| true), "[code] [code]");
    }

    #[test]
    fn finds_the_code_written_with_separators() {
        assert_eq!(only_091616("param 091 616 bad"), "param [code] bad");
        assert_eq!(only_091616("param 09-16-16 bad"), "param [code] bad");
        assert_eq!(only_091616("0 9 1 6 1 6"), "[code]");
        assert_eq!(only_091616("091\u{00A0}616"), "[code]");
        assert_eq!(only_091616("091 - 616"), "[code]");
        assert_eq!(only_091616("091.616."), "[code].");
        assert_eq!(only_091616("0_9_1_6_1_6_"), "[code]_");
        assert_eq!(only_091616("091    616"), "[code]");
        assert_eq!(only_091616("0\u{200B}9\u{200B}1616"), "[code]");
        assert_eq!(only_091616("09\u{00AD}16\u{2060}16"), "[code]");
        // too far apart to be one group
        assert_eq!(only_091616("091     616"), "091     616");
        assert_eq!(only_091616("091 and 616"), "091 and 616");
    }

    #[test]
    fn finds_the_code_in_other_scripts() {
        assert_eq!(only_091616("code ０９１６１６"), "code [code]");
        assert_eq!(only_091616("رمز ٠٩١٦١٦"), "رمز [code]");
        assert_eq!(only_091616("کد ۰۹۱۶۱۶"), "کد [code]");
        assert_eq!(only_091616("०९१६१६"), "[code]");
        assert_eq!(only_091616("๐๙๑๖๑๖"), "[code]");
        assert_eq!(only_091616("09１6１6"), "[code]");
        assert_eq!(only_091616("⓪⑨①⑥①⑥"), "[code]");
        assert_eq!(only_091616("⁰⁹¹⁶¹⁶"), "[code]");
        assert_eq!(only_091616("₀₉₁₆₁₆"), "[code]");
    }

    proptest! {
        /// Whatever the text, the scan never panics, keeps all text that is
        /// not a code, and leaves no group of six digits that is the code.
        #[test]
        fn never_leaves_the_code(prefix in ".{0,20}", sep in "[ \\-.]{0,2}", suffix in ".{0,20}") {
            let text = format!("{prefix}091{sep}616{suffix}");
            let out = codes(&text, |w| w == "091616");
            prop_assert!(out.contains("[code]"), "{text:?} -> {out:?}");
            let again = codes(&out, |w| w == "091616");
            prop_assert_eq!(&again, &out);
        }

        #[test]
        fn text_without_digits_is_untouched(text in "[\\P{N}]{0,60}") {
            prop_assert_eq!(codes(&text, |_| true), text);
        }
    }
}
