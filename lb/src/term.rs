//! The terminal for `lb health --watch`: keys arrive one at a time without echo (so `q` quits
//! without Enter), the table is drawn on the alternate screen, and everything is put back on
//! the way out, however it ends. The termios calls are the one FFI spot here.

/// Single keys without echo, for as long as this lives; None when stdin is not a terminal.
pub struct RawKeys {
    saved: libc::termios,
}

impl RawKeys {
    pub fn enable() -> Option<RawKeys> {
        // SAFETY: isatty only inspects the descriptor number.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills the struct we own.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a pointer to our own struct.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        // Keys one at a time, not echoed; Ctrl-C still raises SIGINT (ISIG stays).
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: a valid descriptor and a pointer to our own, fully initialised struct.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) } != 0 {
            return None;
        }
        Some(RawKeys { saved })
    }
}

impl Drop for RawKeys {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable`, from our own struct.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
    }
}

/// The alternate screen with the cursor hidden, for as long as this lives.
pub struct Screen;

impl Screen {
    pub fn enter() -> Screen {
        use std::io::Write;
        print!("\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        Screen
    }

    /// Draw `text` from the top left, replacing what was there.
    pub fn draw(&self, text: &str) {
        use std::io::Write;
        print!("\x1b[H\x1b[2J{text}");
        let _ = std::io::stdout().flush();
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        use std::io::Write;
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
    }
}
