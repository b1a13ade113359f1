//! The `tessera` binary: everything it does is in [`tessera::cli`].

fn main() -> anyhow::Result<()> {
    let code = tessera::cli::run()?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}
