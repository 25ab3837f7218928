//! Apache's member status flags (`I N D S E H R C`) and the `status=` mini-language.
//!
//! A member is *usable* when it has none of D, S, E, C. The flags live in one `AtomicU32` per member
//! so the data path reads and updates them without locks.

pub const IGNORE_ERRORS: u32 = 1 << 0; // I
pub const DRAIN: u32 = 1 << 1; // N
pub const DISABLED: u32 = 1 << 2; // D
pub const STOPPED: u32 = 1 << 3; // S
pub const IN_ERROR: u32 = 1 << 4; // E
pub const HOT_STANDBY: u32 = 1 << 5; // H
pub const HOT_SPARE: u32 = 1 << 6; // R
pub const HC_FAIL: u32 = 1 << 7; // C

/// Flags that make a member unusable.
pub const UNUSABLE: u32 = DISABLED | STOPPED | IN_ERROR | HC_FAIL;

/// The flags an operator sets (config `status`, balancer-manager); E and C are live state.
pub const OPERATOR: u32 = IGNORE_ERRORS | DRAIN | DISABLED | STOPPED | HOT_STANDBY | HOT_SPARE;

/// Letters in the order Apache prints them.
pub const LETTERS: [(char, u32); 8] = [
    ('I', IGNORE_ERRORS),
    ('N', DRAIN),
    ('D', DISABLED),
    ('S', STOPPED),
    ('E', IN_ERROR),
    ('H', HOT_STANDBY),
    ('R', HOT_SPARE),
    ('C', HC_FAIL),
];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusFlags(pub u32);

impl StatusFlags {
    pub fn contains(self, f: u32) -> bool {
        self.0 & f != 0
    }

    pub fn usable(self) -> bool {
        self.0 & UNUSABLE == 0
    }

    /// Apply Apache's `status=` syntax: letters set flags, `-` switches to clearing, `+` back to
    /// setting (`"+H"`, `"D"`, `"S-E"`). Case-insensitive like Apache.
    pub fn apply(self, spec: &str) -> Result<StatusFlags, String> {
        let mut bits = self.0;
        let mut set = true;
        for c in spec.chars() {
            match c {
                '+' => set = true,
                '-' => set = false,
                c => {
                    let up = c.to_ascii_uppercase();
                    let Some((_, f)) = LETTERS.iter().find(|(l, _)| *l == up) else {
                        return Err(format!(
                            "unknown status flag {c:?} in {spec:?}: expected letters from I N D S E H R C, with + or - before them"
                        ));
                    };
                    if set {
                        bits |= f;
                    } else {
                        bits &= !f;
                    }
                }
            }
        }
        Ok(StatusFlags(bits))
    }

    /// The set letters, e.g. "HE"; "Ok" when none is set (Apache's status page says "Init Ok").
    pub fn letters(self) -> String {
        let s: String =
            LETTERS.iter().filter(|(_, f)| self.contains(*f)).map(|(l, _)| *l).collect();
        if s.is_empty() { "Ok".to_owned() } else { s }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_syntax_sets_and_clears() {
        let f = StatusFlags::default().apply("+H").unwrap();
        assert_eq!(f.letters(), "H");
        let f = StatusFlags(IN_ERROR).apply("S-E").unwrap();
        assert_eq!(f.letters(), "S");
        assert!(!f.usable());
        assert!(StatusFlags::default().apply("+X").is_err());
        assert_eq!(StatusFlags::default().letters(), "Ok");
    }
}
