"""What a run measures: sizes and counts for the full run and for ``--quick``, and one measurement's record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True)
class Plan:
    """Sizes and counts of every scenario (docs: issue 4)."""

    quick: bool
    cost_size: int  # 1: bytes through one room per chunk size
    cost_chunks: tuple[int, ...]
    e2e_size: int  # 2: the file `relay send` sends to `relay receive`
    fanout_size: int  # 3: bytes one sender sends to every receiver
    fanout_receivers: int
    many_rooms: int  # 4: concurrent rooms ...
    many_size: int  # ... and bytes per room
    slow_size: int  # 5: bytes to the slow receiver ...
    slow_rate: int  # ... at this many bytes per second
    pairing_rooms: int  # 6: rooms whose receiver's connect -> first byte is timed
    idle_rooms: int  # 7: rooms held open waiting for a receiver
    chunk: int = MIB  # chunk size of scenarios 2-7
    cli_sizes: tuple[int, ...] = ()  # 8: files `relay send` -> `relay receive` and curl -> piping-server -> curl move
    cli_receivers: int = 3  # 8: receivers of the fan-out case (at the first size)
    cost_repeat: int = 1  # attempts per relay-cost measurement; the least CPU per GiB is kept
    install_baselines: bool = True

    @classmethod
    def full(cls) -> Plan:
        return cls(
            quick=False, cost_size=GIB, cost_chunks=(64 * KIB, 256 * KIB, MIB, 4 * MIB), e2e_size=GIB,
            fanout_size=256 * MIB, fanout_receivers=3, many_rooms=100, many_size=20 * MIB,
            slow_size=200 * MIB, slow_rate=50 * MIB, pairing_rooms=1000, idle_rooms=5000, cost_repeat=2,
            cli_sizes=(GIB,),
        )

    @classmethod
    def tiny(cls) -> Plan:
        """``--quick``: every scenario and baseline runs, on sizes that take seconds, not minutes."""
        return cls(
            quick=True, cost_size=16 * MIB, cost_chunks=(64 * KIB, MIB), e2e_size=8 * MIB,
            fanout_size=4 * MIB, fanout_receivers=3, many_rooms=4, many_size=2 * MIB,
            slow_size=8 * MIB, slow_rate=50 * MIB, pairing_rooms=20, idle_rooms=50, install_baselines=False,
            cli_sizes=(4 * MIB,),
        )


@dataclass
class Measurement:
    """One row of the results: one system in one scenario. Sizes in bytes, times in seconds."""

    scenario: str
    system: str
    chunk: int = 0
    ok: bool = False
    error: str = ""
    bytes: int = 0  # payload bytes delivered to receivers (every copy counts)
    seconds: float = 0.0  # first receiver's connect -> last payload byte at the last receiver
    relay_cpu_s: float = 0.0  # user + system of the relay process over the scenario
    rss_idle: int = 0  # relay RSS just before the scenario's clients start
    rss_peak: int = 0  # highest sampled relay RSS during the scenario
    client_cpu_s: float = 0.0  # user + system of every load-client process together
    machine_busy_s: float = 0.0  # busy CPU seconds of the whole machine over the same window
    window_s: float = 0.0  # length of that window
    extra: dict = field(default_factory=dict)

    @property
    def mib_s(self) -> float:
        return self.bytes / MIB / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_s_per_gib(self) -> float:
        return self.relay_cpu_s / (self.bytes / GIB) if self.bytes else 0.0

    @property
    def other_cpu_s(self) -> float:
        """CPU other processes (not the relay, not the load clients) used during the window: noise."""
        return max(0.0, self.machine_busy_s - self.relay_cpu_s - self.client_cpu_s)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mib_s"] = round(self.mib_s, 1)
        data["cpu_s_per_gib"] = round(self.cpu_s_per_gib, 3)
        data["other_cpu_s"] = round(self.other_cpu_s, 2)
        return data
