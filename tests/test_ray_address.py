"""restorer-cli --engine ray --address HOST:PORT: a cluster a user started with `ray start --head`
is joined, and its workers give the local engine's bytes. `ray start` (Ray 2.59 and later)
turns on token authentication; a driver joins with RAY_AUTH_MODE=token, and without it the
refusal is one line that says so. A Ray Client address (ray://) is refused in one line: Ray
Data does not run through Ray Client. Two nodes (two raylets here) share one job.

The head runs in a session of its own (with its own temporary folder) and the whole session
is killed afterwards, so no process of it outlives the test and no other Ray is touched."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from restorer.cli import main  # noqa: E402
from tests.ray_helpers import kill_session  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
TASK = ["--task", "denoise", "--device", "cpu", "--quiet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """`ray start --head --block` with 2 CPUs; yields (address, environment for drivers)."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to end the head's processes")
    tmp = tmp_path_factory.mktemp("head")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RESTORER_TEST_"))}
    env["RESTORER_HOME"] = str(tmp / "home")
    ray_cli = Path(sys.executable).parent / "ray"
    log = (tmp / "head.log").open("wb")
    proc = subprocess.Popen([str(ray_cli), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(tmp / "ray")],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp / "head.log").read_text(errors="replace")[-2000:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the Ray head did not start in 120 s"
            time.sleep(0.5)
        time.sleep(2)  # the raylet registers after the GCS answers
        yield f"127.0.0.1:{port}", env
    finally:
        kill_session(proc.pid)
        proc.wait()
        log.close()


def cli(args: list, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "restorer.cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_a_cluster_started_with_ray_start_is_joined_by_address(head, tmp_path, monkeypatch):
    address, env = head
    src = tmp_path / "in"
    src.mkdir()
    for name in ("kodim05_crop256.png", "fbcnn_real_2_face.jpg"):
        (src / name).write_bytes((SAMPLES / name).read_bytes())
    run = cli([src, "-o", tmp_path / "ray", *TASK, "--engine", "ray", "--address", address, "--json"],
              {**env, "RAY_AUTH_MODE": "token"}, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["summary"] == {"done": 2}
    monkeypatch.setenv("RESTORER_HOME", env["RESTORER_HOME"])
    assert main([str(src), "-o", str(tmp_path / "local"), *TASK]) == 0
    for name in ("kodim05_crop256.png", "fbcnn_real_2_face.jpg"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_without_the_token_mode_the_refusal_says_what_to_set(head, tmp_path):
    address, env = head
    if not (Path.home() / ".ray" / "auth_token").is_file():
        pytest.skip("this Ray started its head without token authentication")
    run = cli([SAMPLES / "kodim05_crop256.png", "-o", tmp_path / "out", *TASK, "--engine", "ray", "--address", address],
              env, tmp_path)
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"restorer-cli: --engine ray: cannot join the Ray cluster at {address}: ")
    assert last.endswith("set RAY_AUTH_MODE=token)")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_ray_client_address_is_refused_in_one_line(tmp_path, capsys):
    capsys.readouterr()
    assert main([str(SAMPLES / "kodim05_crop256.png"), "-o", str(tmp_path / "out"), *TASK, "--engine", "ray",
                 "--address", "ray://127.0.0.1:10001"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("restorer-cli: --address ray://127.0.0.1:10001: Ray Data does not run "
                          "through Ray Client") and err.count("\n") == 1


def test_two_nodes_each_run_a_worker_and_give_the_local_bytes(tmp_path, monkeypatch, capsys):
    """Two Ray nodes of one CPU each (ray.cluster_utils: two raylets on this machine, as two
    machines would have): a pool of two one-CPU workers can only be placed one per node; the
    outputs are the local engine's."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RESTORER_HOME", str(tmp_path / "home"))
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        for name in ("kodim05_crop256.png", "fbcnn_real_2_face.jpg"):
            (src / f"{i}{name}").write_bytes((SAMPLES / name).read_bytes())
    assert main([str(src), "-o", str(tmp_path / "local"), *TASK]) == 0
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        capsys.readouterr()
        assert main([str(src), "-o", str(tmp_path / "ray"), *TASK, "--engine", "ray", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["summary"] == {"done": 8}
    finally:
        ray.shutdown()
        cluster.shutdown()
    for path in sorted((tmp_path / "local").iterdir()):
        if not path.name.startswith("."):
            assert (tmp_path / "ray" / path.name).read_bytes() == path.read_bytes(), path.name
