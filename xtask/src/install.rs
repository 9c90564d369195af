//! `cargo xtask install`: the release binary, the systemd unit, a commented
//! default configuration and the docs, where a packaged service keeps them.
//! `--destdir` stages them under a folder (packaging, tests).
use anyhow::{Context as _, Result};
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

pub struct Install {
    /// The release binary to install.
    pub bin: PathBuf,
    /// Prepended to every path (empty: the live system).
    pub destdir: PathBuf,
    /// Where the binary and docs go: PREFIX/sbin, PREFIX/share/doc/sipguard.
    pub prefix: PathBuf,
    /// The repository's root, with loader/dist.
    pub root: PathBuf,
}

impl Install {
    pub fn run(&self) -> Result<()> {
        let dist = self.root.join("loader/dist");
        let sbin = self.prefix.join("sbin/sipguard");
        let doc = self.prefix.join("share/doc/sipguard");
        self.put(&sbin, &std::fs::read(&self.bin)?, 0o755)?;
        let unit = std::fs::read_to_string(dist.join("sipguard.service"))?
            .replace("/usr/local/sbin/sipguard", &sbin.display().to_string())
            .replace("/usr/local/share/doc/sipguard", &doc.display().to_string());
        self.put(
            Path::new("/etc/systemd/system/sipguard.service"),
            unit.as_bytes(),
            0o644,
        )?;
        for file in ["README.md", "BENCHMARKS.md"] {
            self.put(
                &doc.join(file),
                &std::fs::read(self.root.join(file))?,
                0o644,
            )?;
        }
        self.put(
            &doc.join("grafana-dashboard.json"),
            &std::fs::read(dist.join("grafana-dashboard.json"))?,
            0o644,
        )?;
        // The operator's configuration is theirs: never overwritten. It may
        // hold API keys, so it is root's alone.
        let config = Path::new("/etc/sipguard/sipguard.toml");
        if self.target(config).exists() {
            println!(
                "xtask: kept {}; the current default is in {}",
                self.target(config).display(),
                self.target(&doc.join("sipguard.toml")).display()
            );
        } else {
            self.put(config, &std::fs::read(dist.join("sipguard.toml"))?, 0o600)?;
        }
        self.put(
            &doc.join("sipguard.toml"),
            &std::fs::read(dist.join("sipguard.toml"))?,
            0o644,
        )?;
        if self.destdir.as_os_str().is_empty() && Path::new("/run/systemd/system").exists() {
            let ok = std::process::Command::new("systemctl")
                .arg("daemon-reload")
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                println!(
                    "xtask: `systemctl daemon-reload` failed; run it before starting sipguard"
                );
            }
        }
        println!("xtask: installed; start it with `systemctl enable --now sipguard`");
        Ok(())
    }

    /// A path as staged under `destdir`.
    fn target(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        if self.destdir.as_os_str().is_empty() {
            Path::new("/").join(relative)
        } else {
            self.destdir.join(relative)
        }
    }

    /// Writes a file beside its final place, then renames it there: a
    /// running binary is replaced, never written over.
    fn put(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
        let target = self.target(path);
        let dir = target.parent().context("installing to a folder")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = dir.join(format!(
            ".{}.new",
            target.file_name().unwrap_or_default().to_string_lossy()
        ));
        std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, &target)
            .with_context(|| format!("cannot install {}", target.display()))?;
        println!("xtask: installed {}", target.display());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_everything_and_keeps_the_operators_config() {
        let dest = tempfile::tempdir().unwrap();
        let bin = dest.path().join("built-sipguard");
        std::fs::write(&bin, b"\x7fELF binary").unwrap();
        let install = Install {
            bin,
            destdir: dest.path().join("root"),
            prefix: "/opt/sg".into(),
            root: Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        };
        install.run().unwrap();
        let root = dest.path().join("root");
        let mode = |p: &str| {
            std::fs::metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(
            std::fs::read(root.join("opt/sg/sbin/sipguard")).unwrap(),
            b"\x7fELF binary"
        );
        assert_eq!(mode("opt/sg/sbin/sipguard"), 0o755);
        let unit =
            std::fs::read_to_string(root.join("etc/systemd/system/sipguard.service")).unwrap();
        assert!(
            unit.contains("ExecStart=/opt/sg/sbin/sipguard run\n"),
            "{unit}"
        );
        assert!(!unit.contains("/usr/local"), "{unit}");
        assert_eq!(mode("etc/sipguard/sipguard.toml"), 0o600);
        for doc in ["README.md", "sipguard.toml", "grafana-dashboard.json"] {
            assert!(
                root.join("opt/sg/share/doc/sipguard").join(doc).exists(),
                "{doc}"
            );
        }
        // A second install keeps the operator's configuration.
        std::fs::write(root.join("etc/sipguard/sipguard.toml"), "ignoreip = []\n").unwrap();
        install.run().unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/sipguard/sipguard.toml")).unwrap(),
            "ignoreip = []\n"
        );
        // Nothing half-written is left beside the files.
        let leftovers = std::fs::read_dir(root.join("opt/sg/sbin")).unwrap().count();
        assert_eq!(leftovers, 1);
    }
}
