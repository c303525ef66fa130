//! `loky-run man`: the manual page, loky-run(1), in roff (committed as docs/loky-run.1).
//!
//! One page for the whole command, as clap_mangen renders it (name, synopsis, description,
//! global options, the subcommands, exit codes), followed by a section per subcommand with its
//! own synopsis, description and options, so that `man loky-run` answers `run --retry-failed`
//! as well as `status --json`.

use clap::CommandFactory;

use crate::cli::Cli;

/// The page, `man -l`-ready.
pub fn page() -> std::io::Result<Vec<u8>> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    // clap_mangen calls the after-help text EXTRA; it holds notes and the exit codes.
    let mut out = String::from_utf8_lossy(&out)
        .replace(".SH EXTRA\n", ".SH NOTES\n")
        .into_bytes();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let name = format!("loky-run {}", sub.get_name());
        let man = clap_mangen::Man::new(
            sub.clone()
                .display_name(name.clone())
                .bin_name(name.clone()),
        );
        let mut part = Vec::new();
        man.render_synopsis_section(&mut part)?;
        man.render_description_section(&mut part)?;
        man.render_options_section(&mut part)?;
        // The subcommand's sections become subsections of one section named after it.
        let part = String::from_utf8_lossy(&part).replace(".SH ", ".SS ");
        out.extend_from_slice(format!(".SH \"{}\"\n", name.to_uppercase()).as_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_covers_every_subcommand_and_its_flags() {
        let text = String::from_utf8(super::page().unwrap()).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH loky-run 1"),
            "{}",
            &text[..200]
        );
        for section in [
            "LOKY\\-RUN RUN",
            "LOKY\\-RUN STATUS",
            "LOKY\\-RUN COMPLETIONS",
        ] {
            assert!(
                text.contains(section) || text.contains(&section.replace("\\-", "-")),
                "{section}"
            );
        }
        assert!(text.contains("retry\\-failed"), "run's flags are listed");
    }
}
