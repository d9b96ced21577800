"""A real single-node Slurm cluster for the tests in this directory, started once per session.

munged, slurmctld and slurmd run from Debian's slurm-wlm and munge packages (installed beforehand:
.ci/run does `apt-get install -y slurm-wlm munge` when it runs as root; nothing is installed here),
with a fresh munge key, a slurm.conf, state, spool and logs in temporary directories and free ports,
so that nothing in /etc, /run or /var is used and a system Slurm (if any) is left alone. The tests are
skipped, with the reason, when the binaries are missing or we are not root (slurmd must run as root to
start jobs). At the end, the jobs still queued are cancelled and exactly the daemons started here are
stopped (by the PIDs of the processes this fixture started).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "slurm"
CLIENTS = ("sbatch", "srun", "scontrol", "squeue", "sinfo", "scancel")
DAEMONS = ("munged", "slurmctld", "slurmd")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"}
# variables of an enclosing Slurm job or launcher that must not leak into the test cluster's clients
_LEAKY = re.compile(r"^(SLURM_|SBATCH_|SRUN_|SALLOC_|SQUEUE_|SINFO_|SCANCEL_|PMI_|PMIX_)")
_LAUNCH = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
           "TORCHELASTIC_RUN_ID"}


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, chars: int = 6000) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"({path}: {e.strerror})"
    return text[-chars:]


def _hardware(slurmd: str, node: str) -> str:
    """The node's CPU layout and memory as slurmd sees them (`slurmd -C`), so the node never drains."""
    try:
        out = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30).stdout
        fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))
        keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
        if all(k in fields for k in keys):
            return " ".join(f"{k}={fields[k]}" for k in keys)
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return f"CPUs={os.cpu_count() or 1} RealMemory={mem_kb // 1024}"


@dataclass
class SlurmCluster:
    """Clients for the test cluster: env carries SLURM_CONF and the interpreter the jobs use."""

    root: Path
    conf: Path
    node: str
    cpus: int
    env: dict
    daemons: dict = field(default_factory=dict)  # name -> Popen

    def run(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=timeout, cwd=REPO)
        if check and p.returncode != 0:
            pytest.fail(f"{' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}\n{self.daemon_logs()}")
        return p

    def sbatch(self, *args: str) -> str:
        """Submit; returns the job id (`sbatch --parsable`)."""
        out = self.run("sbatch", "--parsable", *args).stdout.strip()
        job = out.split(";")[0]
        assert job.isdigit(), f"sbatch printed {out!r}"
        return job

    def job(self, job: str) -> dict:
        """`scontrol show job -o JOB` as a dict (values are the text up to the next space)."""
        p = self.run("scontrol", "show", "job", "-o", job, check=False)
        return dict(re.findall(r"(?:^|\s)(\w+)=(\S*)", p.stdout)) if p.returncode == 0 else {}

    def wait(self, job: str, log: Path, timeout: float = 420) -> dict:
        """Poll until the job has finished (it stays visible for MinJobAge); returns its last record."""
        deadline = time.monotonic() + timeout
        info: dict = {}
        while time.monotonic() < deadline:
            info = self.job(job)
            if info.get("JobState") in FINISHED:
                return info
            time.sleep(1)
        pytest.fail(f"job {job} did not finish within {timeout:.0f} s (state {info.get('JobState')})\n"
                    + self.diagnostics(job, log))

    def wait_array(self, job: str, log: Path, timeout: float = 420) -> list[dict]:
        """Poll until every task of a job array has finished; returns one record per task."""
        deadline = time.monotonic() + timeout
        tasks: list[dict] = []
        while time.monotonic() < deadline:
            p = self.run("scontrol", "show", "job", "-o", job, check=False)
            tasks = [dict(re.findall(r"(?:^|\s)(\w+)=(\S*)", line)) for line in p.stdout.splitlines() if line.strip()]
            if tasks and all(t.get("JobState") in FINISHED for t in tasks):
                return tasks
            time.sleep(1)
        pytest.fail(f"job array {job} did not finish within {timeout:.0f} s "
                    f"(states {[t.get('JobState') for t in tasks]})\n" + self.diagnostics(job, log))

    def diagnostics(self, job: str, log: Path) -> str:
        show = self.run("scontrol", "show", "job", job, check=False)
        return (f"--- job log {log} (tail) ---\n{tail(log)}\n--- scontrol show job {job} ---\n"
                f"{show.stdout}{show.stderr}\n{self.daemon_logs()}")

    def daemon_logs(self) -> str:
        return "\n".join(f"--- {name} log (tail) ---\n{tail(self.root / f'{name}.log', 2500)}"
                         for name in ("slurmctld", "slurmd"))


def _start(name: str, cmd: list[str], root: Path, env: dict) -> subprocess.Popen:
    out = open(root / f"{name}.out", "wb")
    try:
        # a session of its own: a Ctrl-C in the terminal reaches pytest, and the teardown stops the daemons
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=root, start_new_session=True)
    finally:
        out.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_for(what: str, ready, procs: dict, root: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                                   f"{tail(root / f'{name}.out', 3000)}\n{tail(root / f'{name}.log', 3000)}")
        if ready():
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- {n} ---\n{tail(root / f'{n}.out', 2000)}\n{tail(root / f'{n}.log', 2000)}" for n in procs)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


SLURM_CONF = """\
ClusterName=t3stest
# job ids (and so the scripts' MASTER_PORT = 20000 + id % 20000) differ between clusters run side by side
FirstJobId={first_job_id}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again once its old credential expired (default 120 s)
AuthInfo=socket={munge_socket},cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
PlugStackConfig={root}/plugstack.conf
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
JobRequeue=1
ReturnToService=2
# finished jobs stay visible to `scontrol show job` (there is no accounting database)
MinJobAge=3600
KillWait=30
NodeName={node} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    missing = [b for b in CLIENTS + DAEMONS if not _which(b)]
    if missing:
        pytest.skip(f"Slurm tests need Debian's slurm-wlm and munge packages (missing: {', '.join(missing)}); "
                    "`apt-get install -y slurm-wlm munge` as root (.ci/run does it when it can)")
    if os.geteuid() != 0:
        pytest.skip("Slurm tests need root: slurmd starts the jobs and the test cluster runs as SlurmUser=root")

    root = tmp_path_factory.mktemp("slurm")
    for d in ("state", "spool"):
        (root / d).mkdir()
    (root / "plugstack.conf").write_text("")  # no SPANK plugins of the host (pyxis) in the test cluster
    # munged wants every directory above its socket searchable by all, and its key private: a short
    # path under /tmp (sockets paths are limited to 107 bytes), not pytest's 0700 tmp directory
    munge_dir = Path(tempfile.mkdtemp(prefix="t3s-munge-", dir="/tmp"))
    os.chmod(munge_dir, 0o755)
    private = munge_dir / "private"
    private.mkdir(mode=0o700)
    key = private / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    munge_socket = munge_dir / "munge.socket"

    node = socket.gethostname().split(".")[0]
    hardware = _hardware(_which("slurmd"), node)
    cpus = int(re.search(r"CPUs=(\d+)", hardware).group(1))
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(node=node, ctld_port=_free_port(), slurmd_port=_free_port(), root=root,
                                      munge_socket=munge_socket, hardware=hardware,
                                      first_job_id=random.randrange(1000, 1_000_000)))

    base_env = {k: v for k, v in os.environ.items() if not _LEAKY.match(k) and k not in _LAUNCH}
    daemon_env = dict(base_env, SLURM_CONF=str(conf))
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["munged"] = _start("munged", [
            _which("munged"), "--foreground", f"--key-file={key}", f"--socket={munge_socket}",
            f"--pid-file={private / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
            f"--seed-file={private / 'munged.seed'}"], root, daemon_env)
        _wait_for("the munge socket", munge_socket.exists, procs, root, timeout=30)
        procs["slurmctld"] = _start("slurmctld", [_which("slurmctld"), "-D", "-f", str(conf)], root, daemon_env)
        procs["slurmd"] = _start("slurmd", [_which("slurmd"), "-D", "-f", str(conf), "-N", node], root, daemon_env)

        def idle() -> bool:
            p = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True,
                               env=daemon_env, timeout=30)
            return p.returncode == 0 and f"{node} idle" in p.stdout

        _wait_for(f"node {node} to be idle in sinfo", idle, procs, root, timeout=90)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        for proc in reversed(procs.values()):
            _stop(proc)
        shutil.rmtree(munge_dir, ignore_errors=True)
        pytest.fail(f"could not start the test Slurm cluster (config {conf}): {e}", pytrace=False)

    job_env = dict(daemon_env, T3S_PYTHON=sys.executable, T3S_NO_PROGRESS="1", OMP_NUM_THREADS="1",
                   PYTHONPATH=str(REPO) + os.pathsep + base_env.get("PYTHONPATH", ""))
    cluster = SlurmCluster(root=root, conf=conf, node=node, cpus=cpus, env=job_env, daemons=procs)
    try:
        yield cluster
    finally:
        # cancel what is left, let slurmd clean up its steps, then stop our daemons by their PIDs
        queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=daemon_env)
        jobs = queued.stdout.split()
        if jobs:
            subprocess.run(["scancel", *jobs], env=daemon_env, capture_output=True)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                q = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=daemon_env)
                if q.returncode != 0 or not q.stdout.split():
                    break
                time.sleep(1)
        for name in ("slurmd", "slurmctld", "munged"):
            _stop(procs[name])
        shutil.rmtree(munge_dir, ignore_errors=True)
