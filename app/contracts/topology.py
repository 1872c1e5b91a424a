"""The slot topology: which inference slots exist, their role, port and traffic weight.

This is the one place the topology is written (design section 1). Everything else is derived from
it: the NGINX upstream and the Prometheus scrape targets are rendered from it (``ops/render.py``),
the supervisor programs and ``compose.yml`` services are generated per slot, the deployer knows
which slots to move on promotion, the metrics queries build their ``slot`` selectors from the roles,
and settings validate ``MOVIEREC_SLOT`` / ``MOVIEREC_SLOT_PORTS`` against it.

Adding a slot is one line in `SLOTS`. Changing the resting traffic split is one weight here; the
release changes weights at run time with `Topology.with_canary_share`, which keeps the stable
replicas equal and re-renders only NGINX's upstream block.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from math import gcd, lcm
from pathlib import Path

from app.files import write_text_atomic

STABLE = "stable"
CANARY = "canary"
ROLES = (STABLE, CANARY)


@dataclass(frozen=True)
class Slot:
    """One inference server: `name` is its id everywhere (pointer file, metrics label, X-Slot role)."""

    name: str
    role: str  # stable | canary: what the X-Slot header says and what a release moves
    port: int  # loopback port natively; the container port in compose
    weight: int  # NGINX upstream weight at rest

    @property
    def service(self) -> str:
        """Its compose service name (and DNS name inside the compose network)."""
        return f"inference_{self.name}"


# The card's topology: two stable replicas and one canary, 2/2/1 = exactly 80/20 (design section 1).
SLOTS: tuple[Slot, ...] = (
    Slot("stable_1", STABLE, 5001, 2),
    Slot("stable_2", STABLE, 5002, 2),
    Slot("canary", CANARY, 5003, 1),
)


@dataclass(frozen=True)
class Topology:
    """An ordered set of slots with a validated shape: unique names and ports, exactly one canary."""

    slots: tuple[Slot, ...] = SLOTS

    def __post_init__(self) -> None:
        names = [s.name for s in self.slots]
        if len(set(names)) != len(names):
            raise ValueError(f"slot names repeat: {names}")
        ports = [s.port for s in self.slots]
        if len(set(ports)) != len(ports):
            raise ValueError(f"slot ports repeat: {ports}")
        for slot in self.slots:
            if slot.role not in ROLES:
                raise ValueError(f"slot {slot.name}: role {slot.role!r} is not one of {ROLES}")
            if slot.weight < 0 or not 0 < slot.port < 65536:
                raise ValueError(f"slot {slot.name}: weight {slot.weight} / port {slot.port} out of range")
        if [s.role for s in self.slots].count(CANARY) != 1 or not self.stable:
            raise ValueError("a topology has exactly one canary slot and at least one stable slot")

    # ------------------------------------------------------------------ questions
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.slots)

    @property
    def stable(self) -> tuple[Slot, ...]:
        """The stable replicas, in promotion order (each moves only once the previous one serves)."""
        return tuple(s for s in self.slots if s.role == STABLE)

    @property
    def canary(self) -> Slot:
        return next(s for s in self.slots if s.role == CANARY)

    def slot(self, name: str) -> Slot:
        for s in self.slots:
            if s.name == name:
                return s
        raise ValueError(f"unknown slot {name!r}: one of {', '.join(self.names)}")

    def role_of(self, name: str) -> str:
        return self.slot(name).role

    def canary_share(self) -> Fraction:
        """Share of requests NGINX sends to the canary with the current weights."""
        total = sum(s.weight for s in self.slots)
        return Fraction(self.canary.weight, total) if total else Fraction(0)

    def selector(self, role: str) -> str:
        """PromQL label matcher of the slots playing `role`: ``slot="canary"`` or ``slot=~"stable_1|stable_2"``."""
        names = [s.name for s in self.slots if s.role == role]
        if not names:
            raise ValueError(f"no slot plays {role!r}")
        return f'slot="{names[0]}"' if len(names) == 1 else f'slot=~"{"|".join(names)}"'

    def nginx_servers(self, address: Callable[[Slot], str], options: str = "max_fails=1 fail_timeout=2s") -> str:
        """The ``server`` lines of NGINX's upstream block, one per slot with its weight.

        The one rendering of the weights: ``ops`` writes it when the stack starts and the release's
        router rewrites it when a step changes the split. Weight 0 is written ``down`` (NGINX has no
        weight 0), so that slot gets no request while it stays in the block.
        """
        lines = []
        for s in self.slots:
            weight = f"weight={s.weight}" if s.weight > 0 else "down"
            lines.append(f"server {address(s)} {weight} {options}; # {s.name} ({s.role})")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ variants
    def with_ports(self, ports: Mapping[str, int]) -> Topology:
        """The same slots on other ports (tests, a second stack on one machine)."""
        unknown = set(ports) - set(self.names)
        if unknown:
            raise ValueError(f"ports given for unknown slot(s) {sorted(unknown)}")
        return Topology(tuple(replace(s, port=int(ports.get(s.name, s.port))) for s in self.slots))

    def with_canary_share(self, share: float | Fraction) -> Topology:
        """Weights that send `share` (0..1) of requests to the canary, the rest split evenly on stable.

        Weights are the smallest integers giving exactly that split when it is a simple fraction
        (0.2 with two replicas → 2/2/1); otherwise the share is rounded to 1/1000. A weight of 0 means
        "no traffic": the NGINX rendering marks that server ``down`` (NGINX has no weight 0).
        """
        share = Fraction(share).limit_denominator(1000)
        if not 0 <= share <= 1:
            raise ValueError(f"canary share {float(share)} is not within [0, 1]")
        # canary : each stable replica = share · n : (1 - share), scaled to the smallest integers
        canary_w, stable_w = share * len(self.stable), 1 - share
        scale = lcm(canary_w.denominator, stable_w.denominator)
        canary_i, stable_i = int(canary_w * scale), int(stable_w * scale)
        divisor = gcd(canary_i, stable_i) or 1
        weights = {s.name: (canary_i if s.role == CANARY else stable_i) // divisor for s in self.slots}
        return Topology(tuple(replace(s, weight=weights[s.name]) for s in self.slots))


def loopback_address(slot: Slot) -> str:
    """Where the native stack's NGINX, Prometheus and deployer reach a slot."""
    return f"127.0.0.1:{slot.port}"


def service_address(slot: Slot) -> str:
    """Where compose's NGINX, Prometheus and deployer reach a slot (its service name on the private network)."""
    return f"{slot.service}:{slot.port}"


def upstream_path(run_dir: str | Path) -> Path:
    """``<run>/nginx/upstream.conf``: the file nginx.conf includes in its upstream block, the only file a
    weight change rewrites (natively, and in compose where ``<run>/nginx`` is a shared volume)."""
    return Path(run_dir) / "nginx" / "upstream.conf"


def shadow_path(run_dir: str | Path) -> Path:
    """``<run>/nginx/shadow.conf``: present only during a release's shadow step. nginx.conf includes
    ``shadow*.conf`` (a glob: no file, no mirror) in its ``/recommend/`` location; the file holds
    `SHADOW_MIRROR`, which copies each live request to the canary and discards the canary's answer."""
    return Path(run_dir) / "nginx" / "shadow.conf"


def reload_request_path(run_dir: str | Path) -> Path:
    """``<run>/nginx/reload.request``: where a router that cannot signal NGINX (compose: NGINX runs in its own
    container) asks for a reload, by writing a new token after the upstream and shadow files. NGINX's
    container (docker/nginx-run.sh) polls it, checks the configuration, reloads, and answers in
    `reload_applied_path`."""
    return Path(run_dir) / "nginx" / "reload.request"


def reload_applied_path(run_dir: str | Path) -> Path:
    """``<run>/nginx/reload.applied``: ``<token> ok`` once NGINX reloaded for that token's request, ``<token>
    invalid: <why>`` when ``nginx -t`` refused the files, ``<token> failed: <why>`` when the reload itself failed
    (either way NGINX keeps serving the previous configuration)."""
    return Path(run_dir) / "nginx" / "reload.applied"


# The mirror directive of the shadow step; nginx.conf's `/_shadow` location sends the copy to the canary
# with ``X-Shadow: 1`` (the server then writes no provenance row and labels its metrics traffic="shadow").
SHADOW_MIRROR = "mirror /_shadow;\n"
SHADOW_HEADER = "X-Shadow"


def write_nginx_upstream(path: str | Path, topo: Topology, address: Callable[[Slot], str]) -> None:
    """Atomically write NGINX's upstream ``server`` lines (the file nginx.conf includes in its upstream).

    Both sides use it: ``ops`` when the stack starts, the release's router when a step changes the
    split (then it reloads NGINX gracefully).
    """
    write_text_atomic(path, topo.nginx_servers(address))


def parse_ports(text: str, base: Topology | None = None) -> dict[str, int]:
    """``MOVIEREC_SLOT_PORTS``: ``5001,5002,5003`` (one per slot, in slot order) or ``canary=6003,...``."""
    base = base or Topology()
    items = [part.strip() for part in (text or "").split(",") if part.strip()]
    if not items:
        return {}
    try:
        if all("=" in item for item in items):
            return {name.strip(): int(port) for name, _, port in (item.partition("=") for item in items)}
        if len(items) != len(base.slots):
            raise ValueError(f"{len(items)} ports for {len(base.slots)} slots ({', '.join(base.names)})")
        return {slot.name: int(port) for slot, port in zip(base.slots, items, strict=True)}
    except ValueError as exc:
        raise ValueError(f"MOVIEREC_SLOT_PORTS={text!r}: {exc}") from exc


def topology(slot_ports: str = "") -> Topology:
    """The platform's topology with the ports `MOVIEREC_SLOT_PORTS` names (settings pass the text in)."""
    base = Topology()
    return base.with_ports(parse_ports(slot_ports, base))
