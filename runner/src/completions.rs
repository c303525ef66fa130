//! `loky-run completions SHELL`: clap_complete's scripts, with the gaps of its generators for a
//! binary whose name has a dash filled in.
//!
//! - bash: the generator names the states of its completion function after `loky__run` when it
//!   walks the words, but spells the case arms `loky__subcmd__run__...` (the dash of the binary
//!   name escaped twice), so nothing after the subcommand ever completed. The arms are renamed.
//! - fish: positional arguments with a fixed set of values (`completions bash|zsh|fish`) get no
//!   completion line; one is added per such argument.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

const BIN: &str = "loky-run";

/// The completion script for `shell`.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    // Generated into memory: clap_complete panics when its writer fails.
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut out);
    match shell {
        Shell::Bash => fix_bash(&String::from_utf8_lossy(&out)).into_bytes(),
        Shell::Fish => {
            let mut text = String::from_utf8_lossy(&out).into_owned();
            text.push_str(&fish_positional_values(&cmd));
            text.into_bytes()
        }
        _ => out,
    }
}

/// The state names the bash generator uses for the binary, and its misspelling in the arms.
fn fix_bash(script: &str) -> String {
    let state = BIN.replace('-', "__");
    let misspelt = BIN.replace('-', "__subcmd__");
    script.replace(
        &format!("{misspelt}__subcmd__"),
        &format!("{state}__subcmd__"),
    )
}

/// `complete` lines for the positional arguments of subcommands that take one of a few values.
fn fish_positional_values(cmd: &clap::Command) -> String {
    let function = format!("__fish_{}_using_subcommand", BIN.replace('-', "_"));
    let mut lines = String::new();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_positionals() {
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_owned())
                .collect();
            if values.is_empty() {
                continue;
            }
            lines.push_str(&format!(
                "complete -c {BIN} -n \"{function} {}\" -f -a \"{}\"\n",
                sub.get_name(),
                values.join(" ")
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bash_arm_is_a_state_the_walk_can_reach() {
        let text = String::from_utf8(script(Shell::Bash)).unwrap();
        let states: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("cmd=\""))
            .map(|l| l.trim_end_matches('"'))
            .collect();
        let arms: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("        loky") && l.ends_with(')'))
            .map(|l| l.trim().trim_end_matches(')'))
            .collect();
        assert!(arms.len() > 10, "{arms:?}");
        for arm in arms {
            assert!(states.contains(arm), "arm {arm} is never reached");
        }
    }

    #[test]
    fn fish_completes_the_shells_of_completions() {
        let text = String::from_utf8(script(Shell::Fish)).unwrap();
        assert!(
            text.contains("__fish_loky_run_using_subcommand completions\" -f -a \"bash elvish fish powershell zsh\""),
            "{text}"
        );
    }
}
