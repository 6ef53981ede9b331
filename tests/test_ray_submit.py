"""The used-by command for real: ``ray up``, ``ray submit <yaml> sweeps/bn_vs_none.py --dry-run``
and ``ray down`` against a one-node cluster on this machine, reached over SSH. The submitted
sweep is the cheapest shipped one (an MLP, about a minute): what is tested here is the launcher
path, which is the same for every sweep file; the placement dry run is the README's own command.

An sshd of our own listens on 127.0.0.1 with its own config, host key, authorized keys and
client key in a temporary directory (nothing in ~/.ssh is touched). Its logins get a HOME of
their own whose ~/.bashrc puts this virtualenv first on PATH and sets BNSEARCH_STORAGE, as
cluster/local.yaml's setup commands do on a real machine. The launcher config is
cluster/local.yaml with the machine list, key and commands swapped for loopback ones; Ray's
launcher has no SSH port setting, so its ``ssh_proxy_command`` relays to our sshd's port.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from bnsearch.cli import load_sweep

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # this virtualenv: python, ray and bnsearch for the "remote" login shell
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SWEEP_FILE = ROOT / "sweeps" / "bn_vs_none.py"
SWEEP = load_sweep(str(SWEEP_FILE), dry_run=True)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

# Copies bytes between ssh and a TCP port: the ProxyCommand that points ssh at our sshd's port.
RELAY = """\
import os, socket, sys, threading
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def to_ssh():
    while data := conn.recv(65536):
        os.write(1, data)
    os._exit(0)
threading.Thread(target=to_ssh, daemon=True).start()
while data := os.read(0, 65536):
    conn.sendall(data)
conn.shutdown(socket.SHUT_WR)
threading.Event().wait()
"""


@pytest.fixture
def sshd(tmp_path, free_port):
    """An sshd on 127.0.0.1 that lets this user in with a fresh key; yields (port, key, home)."""
    if not (os.access(SSHD, os.X_OK) and shutil.which("rsync") and shutil.which("ssh")):
        if os.environ.get("BNSEARCH_REQUIRE_SSH"):
            pytest.fail("BNSEARCH_REQUIRE_SSH is set but sshd, ssh or rsync is missing (apt-get install openssh-server rsync)")
        pytest.skip("needs openssh-server and rsync (set BNSEARCH_REQUIRE_SSH=1 to make this an error)")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / key)], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "client_key.pub").read_text())
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text(f'export PATH="{BIN}:$PATH"\nexport BNSEARCH_STORAGE="{tmp_path / "results"}"\n')
    login = tmp_path / "login.sh"
    login.write_text(f'#!/bin/bash\nexport HOME="{home}"\ncd "$HOME"\nexec /bin/bash -c "$SSH_ORIGINAL_COMMAND"\n')
    login.chmod(0o755)
    port = free_port()
    (tmp_path / "sshd_config").write_text(textwrap.dedent(f"""\
        ListenAddress 127.0.0.1
        Port {port}
        HostKey {tmp_path / 'host_key'}
        AuthorizedKeysFile {tmp_path / 'authorized_keys'}
        PidFile {tmp_path / 'sshd.pid'}
        AllowUsers {getpass.getuser()}
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        StrictModes no
        ForceCommand {login}
        """))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(tmp_path / "sshd_config")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"sshd did not start: {server.communicate()[1]}")
            time.sleep(0.2)
    yield port, tmp_path / "client_key", home
    server.terminate()
    server.wait(timeout=10)


def loopback_config(port: int, key: Path, workdir: Path, ray_port: int) -> Path:
    """cluster/local.yaml, pointed at this machine through our sshd, with nothing to install."""
    config = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
    relay = workdir / "relay.py"
    relay.write_text(RELAY)
    config.update(
        cluster_name=f"bnsearch-loopback-{os.getpid()}",
        provider={"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
        auth={"ssh_user": getpass.getuser(), "ssh_private_key": str(key), "ssh_proxy_command": f"{sys.executable} {relay} %h {port}"},
        min_workers=0, max_workers=0, file_mounts={}, setup_commands=[], head_setup_commands=[],
        head_start_ray_commands=["ray stop", f"ray start --head --port={ray_port} --num-cpus=2 --include-dashboard=false "
                                 "--autoscaling-config=~/ray_bootstrap_config.yaml"],
    )
    path = workdir / "loopback.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ray_cli(*args: str, timeout: float) -> str:
    result = subprocess.run([str(BIN / "ray"), *args], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"ray {' '.join(args)} failed:\n{output[-6000:]}"
    return output


def test_ray_up_submit_down_runs_a_shipped_sweeps_dry_run(sshd, tmp_path, free_port):
    port, key, home = sshd
    config = loopback_config(port, key, tmp_path, ray_port=free_port())
    name = yaml.safe_load(config.read_text())["cluster_name"]
    try:
        started = time.monotonic()
        ray_cli("up", "-y", "--no-config-cache", str(config), timeout=300)
        up_s = time.monotonic() - started
        output = ray_cli("submit", str(config), str(SWEEP_FILE), "--dry-run", timeout=900)
        submit_s = time.monotonic() - started - up_s
    finally:
        ray_cli("down", "-y", str(config), timeout=120)
        for state in Path("/tmp").glob(f"cluster-{name}.*"):
            state.unlink()
    assert "bnsearch: sweep" in output

    # What the sweep on the "cluster" wrote lands where its ~/.bashrc pointed BNSEARCH_STORAGE.
    mlflow = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name(f"{SWEEP.name}-dry-run")
    runs = mlflow.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if "trial_key" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    phases = sorted(r.data.tags["trial_key"].split("/")[1] for r in children)
    arms = len(SWEEP.arms())
    assert phases == ["replicate"] * (arms * SWEEP.budget.seeds) + ["search"] * (arms * SWEEP.budget.trials_per_arm)
    assert {r.info.status for r in children} == {"FINISHED"}
    assert len({r.data.tags["trial_key"] for r in children}) == len(children)
    assert (home / SWEEP_FILE.name).exists()  # submitted to the head's home, run from there
    print(f"\nray up {up_s:.0f} s, ray submit {submit_s:.0f} s: 1 parent + {len(children)} child runs FINISHED")
