//! The Debian package (issue 8): built with `cargo deb` from the binary the tests already
//! built (no second, release build), its contents and control files checked, and unpacked
//! with dpkg into a throw-away root.
//!
//! Needs `cargo deb` (tests/setup.sh installs the pinned version) and `dpkg`/`dpkg-deb`.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::sipedge::binary;

/// Runs `command`, failing the test with everything it said unless it succeeds.
fn run(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Fails loudly when a tool the test needs is missing.
fn require(mut command: Command, what: &str) {
    let ok = command.output().is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{what} is missing ({command:?} failed); run tests/setup.sh, which installs it"
    );
}

/// Builds the package from the binary under test into `out`; returns its path.
fn build_package(out: &Path) -> PathBuf {
    let built = Path::new(binary());
    // cargo-deb reads `target/release/sipedge` of the metadata as the profile's directory;
    // `debug` is the dev profile's.
    let profile = match built.parent().and_then(Path::file_name) {
        Some(dir) if dir == "debug" => "dev",
        Some(dir) => dir.to_str().unwrap(),
        None => panic!("the binary under test {built:?} is not in a profile directory"),
    };
    run(cargo()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["deb", "-p", "sipedge", "--profile", profile])
        .args(["--no-build", "--strip", "--fast", "--quiet", "--output"])
        .arg(out));
    let mut debs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs.remove(0)
}

#[test]
fn the_package_builds_lists_its_files_and_unpacks_into_a_throwaway_root() {
    require(
        {
            let mut c = cargo();
            c.args(["deb", "--version"]);
            c
        },
        "cargo-deb",
    );
    for tool in ["dpkg-deb", "dpkg"] {
        let mut c = Command::new(tool);
        c.arg("--version");
        require(c, tool);
    }
    let work = tempfile::tempdir().unwrap();
    let deb = build_package(work.path());

    // The contents list, written past the test harness's capture so that CI's log (and the
    // closing note) has it.
    let contents = stdout(&run(Command::new("dpkg-deb").arg("--contents").arg(&deb)));
    writeln!(
        std::io::stderr(),
        "contents of {}:\n{contents}",
        deb.file_name().unwrap().to_string_lossy()
    )
    .unwrap();
    let entry = |path: &str| {
        contents
            .lines()
            .find(|l| l.ends_with(&format!(" .{path}")))
            .unwrap_or_else(|| panic!("{path} not in the package:\n{contents}"))
            .to_owned()
    };
    assert!(entry("/usr/bin/sipedge").starts_with("-rwxr-xr-x 0/0 "));
    assert!(entry("/etc/sipedge/sipedge.toml").starts_with("-rw-r----- 0/0 "));
    entry("/usr/lib/systemd/system/sipedge.service");
    entry("/usr/share/doc/sipedge/examples/sipedge.toml");
    entry("/usr/share/doc/sipedge/copyright");

    // Control: the config is a conffile (upgrades keep the operator's edits), the user is
    // made by adduser, which the package depends on.
    let field = |name: &str| {
        stdout(&run(Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg(name)))
        .trim()
        .to_owned()
    };
    assert_eq!(field("Package"), "sipedge");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    assert!(field("Depends").contains("adduser"), "{}", field("Depends"));
    let conffiles = stdout(&run(Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles")));
    assert_eq!(conffiles.trim(), "/etc/sipedge/sipedge.toml");

    // Unpacked into an empty root with its own dpkg database. The maintainer scripts are not
    // run: postinst creates a system user, which belongs to a real machine, not to this one.
    let root = work.path().join("root");
    let admin = root.join("var/lib/dpkg");
    std::fs::create_dir_all(admin.join("info")).unwrap();
    std::fs::create_dir_all(admin.join("updates")).unwrap();
    std::fs::write(admin.join("status"), "").unwrap();
    let users_before = std::fs::read_to_string("/etc/passwd").unwrap();
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-not-root", "--force-depends", "--log=/dev/null"])
        .arg("--unpack")
        .arg(&deb));
    assert_eq!(
        std::fs::read_to_string("/etc/passwd").unwrap(),
        users_before,
        "unpacking touched the host's users"
    );
    let status = stdout(&run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--status", "sipedge"])));
    assert!(status.contains("Status: install ok unpacked"), "{status}");
    assert!(
        status.contains(" /etc/sipedge/sipedge.toml "),
        "no conffile in the status:\n{status}"
    );
    let postinst = std::fs::read_to_string(admin.join("info/sipedge.postinst")).unwrap();
    assert!(
        postinst.contains("adduser --system") && postinst.contains("/var/lib/sipedge"),
        "{postinst}"
    );

    let installed = root.join("usr/bin/sipedge");
    let version = stdout(&run(Command::new(&installed).arg("--version")));
    assert_eq!(
        version.trim(),
        format!("sipedge {}", env!("CARGO_PKG_VERSION"))
    );
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/sipedge.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/sipedge serve"), "{unit}");

    // A conffile waits beside its place until the configure step, which is the maintainer
    // scripts' part.
    let config = root.join("etc/sipedge/sipedge.toml.dpkg-new");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "{config:?} has mode {mode:o}");
    // As shipped it refuses to start until an appid is filled in; then the installed binary
    // accepts it.
    let shipped = Command::new(&installed)
        .args(["check-config", "--quiet", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(shipped.status.code(), Some(64), "{shipped:?}");
    assert!(
        String::from_utf8_lossy(&shipped.stderr).contains("account.appids"),
        "{shipped:?}"
    );
    let filled = work.path().join("sipedge.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &filled,
        text.replace("appids = []", "appids = [\"bank-appid\"]"),
    )
    .unwrap();
    let quiet = run(Command::new(&installed)
        .args(["check-config", "--quiet", "--config"])
        .arg(&filled));
    assert!(quiet.stdout.is_empty(), "{quiet:?}");
}
