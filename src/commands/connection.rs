//! `ASKING`, `READONLY`, `READWRITE`: per-connection routing flags.
//!
//! ```text
//! ASKING      -> +OK   the next command may use a slot this node is importing
//! READONLY    -> +OK   reads of the master's slots are served by this replica
//! READWRITE   -> +OK   back to the default
//! ```
//!
//! The server's own versions of these commands refuse to run outside cluster mode, so the command
//! filter hands them to these handlers, which record the flag for the calling client.

use crate::reply::Reply;
use crate::state::State;

/// Where the command runs: flags set from a script or from inside `EXEC` do not outlive it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallSite {
    pub in_script: bool,
    pub in_exec: bool,
}

pub fn asking(state: &mut State, client: u64, site: CallSite, extra_args: usize) -> Reply {
    if extra_args > 0 {
        return Reply::error("ERR wrong number of arguments for 'asking' command");
    }
    // Natively, ASKING inside EXEC or a script only lasts until that command ends: nothing is
    // left armed for the connection's next command.
    if !site.in_script && !site.in_exec {
        state.connections.arm_asking(client);
    }
    Reply::Ok
}

pub fn readonly(
    state: &mut State,
    client: u64,
    site: CallSite,
    extra_args: usize,
    on: bool,
) -> Reply {
    if extra_args > 0 {
        let name = if on { "readonly" } else { "readwrite" };
        return Reply::error(format!(
            "ERR wrong number of arguments for '{name}' command"
        ));
    }
    if !site.in_script {
        state.connections.set_readonly(client, on);
    }
    Reply::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command_table::Role;

    #[test]
    fn asking_arms_the_connection() {
        let mut s = State::default();
        assert_eq!(asking(&mut s, 9, CallSite::default(), 0), Reply::Ok);
        assert!(s.connections.take_asking(9, Role::Plain, false, false));
    }

    #[test]
    fn asking_inside_exec_or_script_is_not_kept() {
        let mut s = State::default();
        asking(
            &mut s,
            9,
            CallSite {
                in_script: false,
                in_exec: true,
            },
            0,
        );
        asking(
            &mut s,
            9,
            CallSite {
                in_script: true,
                in_exec: false,
            },
            0,
        );
        assert!(!s.connections.asking_pending());
    }

    #[test]
    fn readonly_and_readwrite_toggle() {
        let mut s = State::default();
        readonly(&mut s, 3, CallSite::default(), 0, true);
        assert!(s.connections.readonly(3));
        readonly(&mut s, 3, CallSite::default(), 0, false);
        assert!(!s.connections.readonly(3));
        assert!(matches!(
            readonly(&mut s, 3, CallSite::default(), 1, true),
            Reply::Error(_)
        ));
    }
}
