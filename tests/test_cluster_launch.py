"""The real `ray up` path without a cloud: a local-provider cluster on 127.0.0.1 over SSH.

The test starts its own sshd (throwaway host and client keys, a free loopback port, reached
through a tiny TCP relay as the SSH ProxyCommand since Ray's SSH runner has no port option) whose
sessions get a throwaway HOME. It brings up ``cluster_local.yaml`` with only the machine-specific
fields replaced (addresses, key, user, the head's port; the setup step links this test's
virtualenv as ``~/spiral-venv`` instead of installing a new one), then ``ray submit``s a one-minute
``launch/run_mnist.py`` run, checks that it trained and checkpointed, and brings the cluster down.
"""

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO, skip_unless

RELAY = r'''
import os, socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def upstream():
    while True:
        data = os.read(0, 65536)
        if not data:
            s.shutdown(socket.SHUT_WR)
            return
        s.sendall(data)
threading.Thread(target=upstream, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    os.write(1, data)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, cwd, timeout, env=None):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def sshd(tmp_path):
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    skip_unless(os.path.exists(sshd_bin) and shutil.which("ssh") and shutil.which("ssh-keygen"),
                "openssh-server and openssh-client are needed (apt-get install openssh-server)")
    skip_unless(bool(shutil.which("rsync")), "rsync is needed by `ray up` (apt-get install rsync)")
    home = tmp_path / "home"
    home.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)],
                       check=True)
    shutil.copy(tmp_path / "client_key.pub", tmp_path / "authorized_keys")
    (tmp_path / "relay.py").write_text(RELAY)
    port = _free_port()
    config = tmp_path / "sshd_config"
    config.write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {tmp_path}/host_key
PidFile {tmp_path}/sshd.pid
AuthorizedKeysFile {tmp_path}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
ForceCommand cd {home} && export HOME={home} && exec bash -c "$SSH_ORIGINAL_COMMAND"
""")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"sshd did not start: {proc.stderr.read().decode()[-2000:]}")
    yield {"port": port, "home": home, "dir": tmp_path}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.slow
def test_ray_up_submit_down_on_a_local_provider_cluster(sshd, data_dir, tmp_path):
    ray_bin = str(pathlib.Path(sys.executable).parent / "ray")
    head_port = _free_port()
    cluster = yaml.safe_load((REPO / "cluster_local.yaml").read_text())
    cluster["cluster_name"] = f"spiral-test-{head_port}"
    cluster["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    cluster["auth"] = {
        "ssh_user": os.environ.get("USER") or subprocess.check_output(["id", "-un"], text=True).strip(),
        "ssh_private_key": str(sshd["dir"] / "client_key"),
        "ssh_proxy_command": f"{sys.executable} {sshd['dir'] / 'relay.py'} 127.0.0.1 {sshd['port']}",
    }
    # Setup: the file's own PATH line, but this test's virtualenv instead of a fresh install.
    path_line = [c for c in cluster["setup_commands"] if "bashrc" in c]
    assert path_line, "cluster_local.yaml should put ~/spiral-venv on the login PATH"
    cluster["setup_commands"] = [f"ln -sfn {sys.prefix} ~/spiral-venv"] + path_line
    # The head: the file's commands, on a free port and two CPUs.
    cluster["head_start_ray_commands"] = [
        c.replace("--port=6379", f"--port={head_port} --num-cpus=2 --include-dashboard=false")
        for c in cluster["head_start_ray_commands"]]
    assert any(f"--port={head_port}" in c for c in cluster["head_start_ray_commands"])
    config_path = tmp_path / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(cluster))
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    run_dir = tmp_path / "run"
    try:
        code, out = _run([ray_bin, "up", "-y", "--no-config-cache", str(config_path)], REPO, 300, env)
        assert code == 0, f"ray up failed:\n{out[-4000:]}"
        assert (sshd["home"] / "spiral" / "setup.py").exists(), "file_mounts did not copy the project"
        flags = ["--ray_address=auto", "--network=tiny", "--disc_network=tiny", "--episode_length=5",
                 "--num_actors=1", "--envs_per_actor=4", "--batch_size=8", "--disc_batch_size=8",
                 "--dataset_limit=512", "--max_minutes=1", "--max_updates=0",
                 f"--data_dir={data_dir}", f"--run_dir={run_dir}", "--log_every_seconds=5"]
        code, out = _run([ray_bin, "submit", str(config_path), "launch/run_mnist.py", "--"] + flags,
                         REPO, 600, env)
        assert code == 0 and "done:" in out, f"ray submit failed:\n{out[-6000:]}"
        updates = int(out.split("done: ")[1].split(" policy updates")[0])
        assert updates > 0, out[-3000:]
        checkpoints = sorted((run_dir / "checkpoints").glob("ckpt_*/run.json"))
        assert checkpoints, f"no checkpoint in {run_dir}:\n{out[-3000:]}"
        assert list((run_dir / "tb").glob("events.out.tfevents.*")), "no TensorBoard log"
    finally:
        down_code, down_out = _run([ray_bin, "down", "-y", str(config_path)], REPO, 300, env)
    assert down_code == 0, f"ray down failed:\n{down_out[-3000:]}"
