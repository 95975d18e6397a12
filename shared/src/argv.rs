//! Consul's Go-style flags (`-server`, `-data-dir=/x`) for clap, which only knows `--long`.
//!
//! Before clap parses, [`normalise`] walks the arguments with the command tree in hand and
//! rewrites `-name[=value]` to `--name[=value]` when `name` is a long flag of the current
//! subcommand. Like Go's flag package it stops at the first positional argument (so a child
//! command given to `cairn lock` keeps its own flags) and at `--`. `--name` keeps working.

use clap::Command;

pub fn normalise(mut cmd: Command, args: Vec<String>) -> Vec<String> {
    cmd.build();
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    if let Some(bin) = iter.next() {
        out.push(bin);
    }
    let mut current = cmd;
    let mut passthrough = false;
    let mut pending_value = false;
    for arg in iter {
        if passthrough {
            out.push(arg);
            continue;
        }
        if pending_value {
            pending_value = false;
            out.push(arg);
            continue;
        }
        if arg == "--" {
            passthrough = true;
            out.push(arg);
            continue;
        }
        if let Some(flag) = arg.strip_prefix('-')
            && !flag.starts_with('-')
            && !flag.is_empty()
        {
            let (name, has_value) = match flag.split_once('=') {
                Some((n, _)) => (n, true),
                None => (flag, false),
            };
            let mut chars = name.chars();
            let short = match (chars.next(), chars.next()) {
                (Some(c), None) => Some(c),
                _ => None,
            };
            let found = current.get_arguments().find(|a| match short {
                Some(c) => a.get_short() == Some(c),
                None => {
                    a.get_long() == Some(name)
                        || a.get_all_aliases().is_some_and(|v| v.contains(&name))
                }
            });
            if let Some(a) = found {
                pending_value =
                    a.get_action().takes_values() && !a.is_require_equals_set() && !has_value;
                out.push(if short.is_some() {
                    arg
                } else {
                    format!("-{arg}")
                });
                continue;
            }
        } else if let Some(flag) = arg.strip_prefix("--")
            && !flag.contains('=')
            && let Some(a) = current.get_arguments().find(|a| a.get_long() == Some(flag))
        {
            pending_value = a.get_action().takes_values() && !a.is_require_equals_set();
            out.push(arg);
            continue;
        }
        if !arg.starts_with('-') {
            if let Some(sub) = current.find_subcommand(&arg).cloned() {
                current = sub;
                out.push(arg);
                continue;
            }
            // The first positional ends flag parsing, as in Go.
            passthrough = true;
        }
        out.push(arg);
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction};

    use super::*;

    fn cmd() -> Command {
        Command::new("cairn")
            .subcommand(
                Command::new("agent")
                    .arg(
                        Arg::new("server")
                            .long("server")
                            .num_args(0..=1)
                            .require_equals(true)
                            .default_missing_value("true")
                            .action(ArgAction::Set),
                    )
                    .arg(Arg::new("data-dir").long("data-dir"))
                    .arg(
                        Arg::new("retry-join")
                            .long("retry-join")
                            .action(ArgAction::Append),
                    ),
            )
            .subcommand(
                Command::new("lock")
                    .arg(Arg::new("n").short('n'))
                    .arg(Arg::new("name").long("name"))
                    .arg(Arg::new("rest").num_args(1..).trailing_var_arg(true)),
            )
    }

    fn norm(args: &[&str]) -> Vec<String> {
        normalise(cmd(), args.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn rewrites_known_single_dash_longs() {
        assert_eq!(
            norm(&[
                "cairn",
                "agent",
                "-server",
                "-data-dir=/x",
                "-retry-join",
                "a",
                "-retry-join=b"
            ]),
            [
                "cairn",
                "agent",
                "--server",
                "--data-dir=/x",
                "--retry-join",
                "a",
                "--retry-join=b"
            ]
        );
    }

    #[test]
    fn stops_at_first_positional_and_keeps_shorts() {
        assert_eq!(
            norm(&["cairn", "lock", "-n", "2", "-name", "x", "p", "ls", "-name"]),
            [
                "cairn", "lock", "-n", "2", "--name", "x", "p", "ls", "-name"
            ]
        );
    }

    #[test]
    fn a_flag_value_is_not_mistaken_for_a_positional() {
        assert_eq!(
            norm(&["cairn", "agent", "-data-dir", "/x", "-server"]),
            ["cairn", "agent", "--data-dir", "/x", "--server"]
        );
    }
}
