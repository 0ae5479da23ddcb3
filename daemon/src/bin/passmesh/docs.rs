//! `passmesh generate-docs`: the man pages and shell completions, generated from the clap definitions.

use std::path::Path;

use crate::Args;

/// Man pages (`passmesh.1` and one `passmesh-SUB.1` per visible subcommand) and bash/zsh/fish completions.
pub(crate) fn generate_docs(dir: &Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut cmd = Args::command();
    cmd.build();
    write_man_pages(&cmd, "", &man)?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "passmesh.bash"),
        (clap_complete::Shell::Zsh, "_passmesh"),
        (clap_complete::Shell::Fish, "passmesh.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Args::command(), "passmesh", &mut out);
        std::fs::write(completions.join(file), out)?;
    }
    Ok(())
}

fn write_man_pages(cmd: &clap::Command, prefix: &str, dir: &Path) -> std::io::Result<()> {
    let name = if prefix.is_empty() {
        cmd.get_name().to_owned()
    } else {
        format!("{prefix}-{}", cmd.get_name())
    };
    let page = cmd.clone().name(name.clone());
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    std::fs::write(dir.join(format!("{name}.1")), out)?;
    for sub in cmd.get_subcommands() {
        if !sub.is_hide_set() && sub.get_name() != "help" {
            write_man_pages(sub, &name, dir)?;
        }
    }
    Ok(())
}
