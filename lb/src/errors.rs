//! Error text for logs and operators: an error and its causes on one line.

/// An error and its causes on one line, `outer: cause: cause`. A cause whose text the message
/// already holds (aya, for one, repeats its cause) is not repeated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}
