"""Prometheus Alertmanager, the peer the bench measures the bridge against.

Alertmanager is what users compare an alert forwarder with: it takes alerts over HTTP and sends
them to PagerDuty through the Events API v2. The bench runs Debian's build (package
``prometheus-alertmanager``, 0.25) on loopback with the one route the issue names: every alert
its own group (``group_by: ['...']``), sent at once (``group_wait: 0s``), to the simulator's
``/v2/enqueue``. No cluster (``--cluster.listen-address=``): the bridge runs alone too.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from stack import Service, Services, free_port, http_ok, wait_until

BINARIES = ("prometheus-alertmanager", "alertmanager")
# An Events API v2 integration key is 32 characters; the simulator accepts any.
ROUTING_KEY = "benchbenchbenchbenchbenchbench32"
INSTALL_HINT = "apt-get install prometheus-alertmanager (Debian; 0.25 in bookworm)"


def find_binary() -> str | None:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


def version(binary: str) -> str:
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    first = (output.stdout or output.stderr).splitlines()
    # "alertmanager, version 0.25.0+ds (branch: debian/sid, revision: 0.25.0+ds-1+b4)"
    return first[0].split(" (")[0] if first else "alertmanager"


def routing_key(shard: int) -> str:
    """The integration key of one shard: ROUTING_KEY's length, the shard's number at the end."""
    return f"{ROUTING_KEY[:-4]}{shard:04d}"


def config(simulator_url: str, *, keys: int = 1, group_interval: str = "5m") -> str:
    """The route and receiver: one group per alert, no wait, the simulator as PagerDuty.

    ``keys`` > 1 spreads the alerts over that many integration keys by their ``shard`` label
    (one receiver each): PagerDuty limits each Events API key to about 120 events a minute, so
    a storm compared with the bridge's one REST key (960 a minute) gets the same budget.
    ``group_interval`` is when a group's next notification (a resolve) may go."""
    if keys == 1:
        receivers = f"""\
receivers:
  - name: pagerduty
    pagerduty_configs:
      - routing_key: {ROUTING_KEY}
        url: {simulator_url}/v2/enqueue
        send_resolved: true
"""
        routes = ""
    else:
        receivers = "receivers:\n  - name: pagerduty\n" + "".join(
            f"""\
  - name: shard{shard}
    pagerduty_configs:
      - routing_key: {routing_key(shard)}
        url: {simulator_url}/v2/enqueue
        send_resolved: true
"""
            for shard in range(keys)
        )
        routes = "  routes:\n" + "".join(
            f"""\
    - receiver: shard{shard}
      matchers: ['shard="{shard}"']
"""
            for shard in range(keys)
        )
    return f"""\
route:
  receiver: pagerduty
  group_by: ['...']
  group_wait: 0s
  group_interval: {group_interval}
  repeat_interval: 4h
{routes}{receivers}"""


def start(
    services: Services,
    workdir: Path,
    binary: str,
    simulator_url: str,
    *,
    keys: int = 1,
    group_interval: str = "5m",
) -> tuple[Service, str]:
    """Start Alertmanager; return it and its base URL once it answers ``/-/ready``."""
    config_file = workdir / "alertmanager.yml"
    config_file.write_text(config(simulator_url, keys=keys, group_interval=group_interval))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = services.start_program(
        "alertmanager",
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.path={workdir / ('alertmanager-data-' + str(port))}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
    )
    wait_until(service, lambda: http_ok(f"{url}/-/ready"))
    return service, url
