//! Splitting text into chunks before BPE, by a GPT-4-style regex.
//!
//! The default pattern has a hand-written matcher (`fast_match`) that follows the regex engine's
//! leftmost-first, greedy-with-backtracking semantics alternative by alternative; any other
//! pattern goes through `fancy_regex`. Character classes (\p{L}, \p{N}, \s and the
//! case-insensitive letters of the contractions) are read out of `regex-syntax`, the crate the
//! regex engine itself uses, so both paths agree on every Unicode code point. A test in this file
//! checks the fast matcher against fancy_regex on random strings.

use regex_syntax::hir::{Class, HirKind};
use std::sync::OnceLock;

/// GPT-4's split pattern, with numbers in runs of 1-2 digits (not 1-3) to suit smaller vocabularies.
pub const DEFAULT_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

const L: u8 = 1; // \p{L}
const N: u8 = 2; // \p{N}
const WS: u8 = 4; // \s
const SDMT: u8 = 8; // (?i:[sdmt])
const LL: u8 = 16; // (?i:l)
const V: u8 = 32; // (?i:v)
const R: u8 = 64; // (?i:r)
const E: u8 = 128; // (?i:e)

/// Per-code-point class bits: a flat table for the BMP, sorted ranges above it.
struct Classes {
    bmp: Vec<u8>,
    astral: Vec<(u32, u32, u8)>,
}

fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::Parser::new().parse(pattern).expect("valid class");
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => {
            c.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect()
        }
        _ => panic!("{pattern} is not a Unicode class"),
    }
}

fn classes() -> &'static Classes {
    static CLASSES: OnceLock<Classes> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let sets: [(&str, u8); 8] = [
            (r"\p{L}", L),
            (r"\p{N}", N),
            (r"\s", WS),
            (r"(?i:[sdmt])", SDMT),
            (r"(?i:l)", LL),
            (r"(?i:v)", V),
            (r"(?i:r)", R),
            (r"(?i:e)", E),
        ];
        let mut bmp = vec![0u8; 0x10000];
        let mut astral = Vec::new();
        for (pattern, bit) in sets {
            for (lo, hi) in class_ranges(pattern) {
                for cp in lo..=hi.min(0xFFFF) {
                    bmp[cp as usize] |= bit;
                }
                if hi > 0xFFFF {
                    astral.push((lo.max(0x10000), hi, bit));
                }
            }
        }
        astral.sort_unstable();
        Classes { bmp, astral }
    })
}

impl Classes {
    #[inline]
    fn of(&self, c: char) -> u8 {
        let cp = c as u32;
        if cp < 0x10000 {
            return self.bmp[cp as usize];
        }
        // few astral ranges per class: a linear scan over the (sorted) ones that start below cp
        let mut bits = 0;
        for &(lo, hi, bit) in &self.astral {
            if lo > cp {
                break;
            }
            if cp <= hi {
                bits |= bit;
            }
        }
        bits
    }
}

#[inline]
fn char_at(s: &str, i: usize) -> Option<(char, usize)> {
    let b = *s.as_bytes().get(i)?;
    if b < 0x80 {
        return Some((b as char, 1));
    }
    let c = s[i..].chars().next()?;
    Some((c, c.len_utf8()))
}

/// Byte index just past the run of chars starting at `i` whose class bits intersect `want`.
#[inline]
fn run_end(cls: &Classes, s: &str, mut i: usize, want: u8) -> usize {
    while let Some((c, n)) = char_at(s, i) {
        if cls.of(c) & want == 0 {
            break;
        }
        i += n;
    }
    i
}

/// Run of "punctuation": neither whitespace, letter nor number.
#[inline]
fn punct_end(cls: &Classes, s: &str, mut i: usize) -> usize {
    while let Some((c, n)) = char_at(s, i) {
        if cls.of(c) & (L | N | WS) != 0 {
            break;
        }
        i += n;
    }
    i
}

/// End of the DEFAULT_PATTERN match that starts at byte `i` (< s.len()). Every position matches.
fn fast_match(cls: &Classes, s: &str, i: usize) -> usize {
    let (c, n) = char_at(s, i).expect("i < len");
    let f = cls.of(c);
    let next = char_at(s, i + n);
    let next_f = next.map_or(0, |(c2, _)| cls.of(c2));
    // 1. '(?i:[sdmt]|ll|ve|re)
    if c == '\'' {
        if let Some((_, n2)) = next {
            if next_f & SDMT != 0 {
                return i + n + n2;
            }
            if let Some((c3, n3)) = char_at(s, i + n + n2) {
                let f3 = cls.of(c3);
                if (next_f & LL != 0 && f3 & LL != 0)
                    || (next_f & (V | R) != 0 && f3 & E != 0)
                {
                    return i + n + n2 + n3;
                }
            }
        }
    }
    // 2. [^\r\n\p{L}\p{N}]?+\p{L}+
    if f & L != 0 {
        return run_end(cls, s, i + n, L);
    }
    if f & N == 0 && c != '\r' && c != '\n' && next_f & L != 0 {
        return run_end(cls, s, i + n, L);
    }
    // 3. \p{N}{1,2}
    if f & N != 0 {
        return if next_f & N != 0 { i + n + next.unwrap().1 } else { i + n };
    }
    // 4. ' ?[^\s\p{L}\p{N}]++[\r\n]*'
    let punct_start = if f & WS == 0 {
        Some(i) // c itself is punctuation (not L, not N, not whitespace)
    } else if c == ' ' && next.is_some() && next_f & (L | N | WS) == 0 {
        Some(i + n)
    } else {
        None
    };
    if let Some(start) = punct_start {
        let mut j = punct_end(cls, s, start);
        let b = s.as_bytes();
        while j < b.len() && (b[j] == b'\r' || b[j] == b'\n') {
            j += 1;
        }
        return j;
    }
    // c is whitespace from here on
    let j = run_end(cls, s, i, WS);
    // 5. \s*[\r\n]: greedy, so the match ends after the last \r or \n in the run
    if let Some(k) = s.as_bytes()[i..j].iter().rposition(|&b| b == b'\r' || b == b'\n') {
        return i + k + 1;
    }
    // 6. \s+(?!\S): the whole run at end of text, else the run minus its last char
    if j == s.len() {
        return j;
    }
    let last = s[..j].char_indices().next_back().map(|(k, _)| k).unwrap();
    if last > i {
        return last;
    }
    // 7. \s+
    j
}

/// Splits text into chunks with a pattern (fast path for DEFAULT_PATTERN).
#[derive(Debug)]
pub struct Splitter {
    pattern: String,
    regex: fancy_regex::Regex,
    fast: bool,
}

impl Splitter {
    pub fn new(pattern: &str) -> Result<Self, String> {
        let regex = fancy_regex::Regex::new(pattern)
            .map_err(|e| format!("invalid split pattern {pattern:?}: {e}"))?;
        let fast = pattern == DEFAULT_PATTERN;
        if fast {
            classes(); // build the tables once, outside any parallel section
        }
        Ok(Splitter { pattern: pattern.to_string(), regex, fast })
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Calls `f` on every chunk of `text`, in order. Text that the pattern does not match (only
    /// possible with custom patterns) is reported as an error, never dropped silently.
    pub fn for_each<'a>(&self, text: &'a str, mut f: impl FnMut(&'a str)) -> Result<(), String> {
        if self.fast {
            let cls = classes();
            let mut i = 0;
            while i < text.len() {
                let j = fast_match(cls, text, i);
                f(&text[i..j]);
                i = j;
            }
            return Ok(());
        }
        let mut covered = 0;
        for m in self.regex.find_iter(text) {
            let m = m.map_err(|e| format!("split pattern failed on input: {e}"))?;
            if m.start() != covered {
                return Err(format!(
                    "split pattern {:?} does not match {:?}; the text would be dropped",
                    self.pattern,
                    &text[covered..m.start()]
                ));
            }
            covered = m.end();
            if m.start() < m.end() {
                f(m.as_str());
            }
        }
        if covered != text.len() {
            return Err(format!(
                "split pattern {:?} does not match {:?}; the text would be dropped",
                self.pattern,
                &text[covered..]
            ));
        }
        Ok(())
    }

    pub fn split<'a>(&self, text: &'a str) -> Result<Vec<&'a str>, String> {
        let mut out = Vec::new();
        self.for_each(text, |c| out.push(c))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regex_split(text: &str) -> Vec<String> {
        static RE: OnceLock<fancy_regex::Regex> = OnceLock::new();
        let re = RE.get_or_init(|| fancy_regex::Regex::new(DEFAULT_PATTERN).unwrap());
        re.find_iter(text).map(|m| m.unwrap().as_str().to_string()).collect()
    }

    fn fast_split(text: &str) -> Vec<String> {
        static S: OnceLock<Splitter> = OnceLock::new();
        let s = S.get_or_init(|| Splitter::new(DEFAULT_PATTERN).unwrap());
        s.split(text).unwrap().into_iter().map(String::from).collect()
    }

    #[test]
    fn examples_match_regex() {
        for text in [
            "",
            "Hello world",
            "  leading and trailing  ",
            "it's we'll I'VE they're don't 'S 'ſ 'll' 'x",
            "x = 12345 + 6.7e-8;\n\n\tfoo()\r\n  bar",
            "a   1  b\t\t\nc \u{a0}d\u{3000}e",
            "naïve café 中文字符 😀👍 emoji",
            "Ⅻ ½ ٣٤٥ mixed⁵digits",
            "!!!\n\n???  ...\r\r\n",
            "tab\tthen   \n  newline\n",
        ] {
            assert_eq!(fast_split(text), regex_split(text), "text {text:?}");
        }
    }

    #[test]
    fn random_strings_match_regex() {
        let alphabet: Vec<char> = "aZéſKk中😀1٣Ⅻ½ \t\n\r\u{a0}\u{3000}\u{2028}'sdmtlLvVrReE-!_.,\u{301}\u{200b}"
            .chars()
            .collect();
        let mut state: u64 = 0x9E3779B97F4A7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..50000 {
            let len = (next() % 24) as usize;
            let text: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            assert_eq!(fast_split(&text), regex_split(&text), "text {text:?}");
        }
    }

    #[test]
    fn custom_pattern_and_errors() {
        let s = Splitter::new(r"\w+|\s+|[^\w\s]+").unwrap();
        assert_eq!(s.split("hi, you").unwrap(), vec!["hi", ",", " ", "you"]);
        assert!(Splitter::new("(unclosed").unwrap_err().contains("invalid split pattern"));
        let gaps = Splitter::new(r"[a-z]+").unwrap();
        assert!(gaps.split("ab cd").unwrap_err().contains("dropped"));
    }
}
