"""Real software-emulated guests for the benchmark's honesty row.

Uses the functional tests' helpers (tests/functional/helpers): libvirtd is
started if needed, and each guest is the tiny busybox initramfs under
TCG, defined with the <nova:instance> metadata Nova writes, so the real
inventory parses the same kind of XML as on a compute node.
"""

import time
import uuid as uuidlib

from tools.bench_support import fixtures
from tools.bench_support import standin


class Unavailable(RuntimeError):
    pass


class RealGuests:
    """``with RealGuests(2) as guests:`` boots them, then cleans up."""

    def __init__(self, count, boot_timeout=180):
        self.count = count
        self.boot_timeout = boot_timeout
        self.guests = []
        self.uri = None

    def __enter__(self):
        try:
            from tests.functional.helpers import guest as guest_mod
            from tests.functional.helpers import libvirtd
        except ImportError as exc:
            raise Unavailable('functional test helpers not importable: %s'
                              % exc)
        reason = libvirtd.unavailable_reason()
        if reason:
            raise Unavailable(reason)
        try:
            libvirtd.ensure_libvirtd()
        except libvirtd.LibvirtdError as exc:
            raise Unavailable(str(exc))
        self.uri = libvirtd.DEFAULT_URI
        try:
            for i in range(self.count):
                instance = str(uuidlib.uuid4())
                meta = guest_mod.nova_metadata_xml(
                    instance, 'bench-real-%d' % i, uuidlib.uuid4().hex,
                    'bench-project', uuidlib.uuid4().hex, 'bench-user',
                    flavor='m1.tiny', vcpus=1, memory_mb=128)
                g = guest_mod.Guest(uuid=instance, label='bench',
                                    nova_metadata=meta, memory_mb=128)
                self.guests.append(g)
                g.start()
            for g in self.guests:
                g.wait_booted(timeout=self.boot_timeout)
        except Exception as exc:
            self.__exit__(None, None, None)
            raise Unavailable('could not boot the guests: %s' % exc)
        return self

    def record(self):
        """A recording of the first guest's libvirt replies."""
        import libvirt
        conn = libvirt.openReadOnly(self.uri)
        try:
            dom = conn.lookupByUUIDString(self.guests[0].uuid)
            return standin.record(
                conn, dom, 'a real TCG guest '
                '(tests/functional/helpers/guest.py) on %s' % self.uri)
        finally:
            conn.close()

    def calibrate_rpc(self, count=100, reps=5):
        """What one more domain costs in the agent's bulk stats call.

        ``domainListGetStats([dom] * k, <the inventory's stats and
        flags>)`` returns
        k records (libvirt serves duplicates), so the per-domain cost of
        the real RPC is measured with a single guest: this process's CPU
        (XDR decoding, typed parameters to dicts, virDomain objects),
        libvirtd's CPU (all its threads) and the wall time, for k=1 and
        k=``count``. Per call, in µs.
        """
        import libvirt

        from scaph_openstack.inventory import libvirt as inventory
        stats = inventory.STATS
        # A domain list takes no state filter: the other flags only.
        flags = inventory.FLAGS & standin.STATS_OTHER_FLAGS
        conn = libvirt.openReadOnly(self.uri)
        try:
            dom = conn.lookupByUUIDString(self.guests[0].uuid)
            pids = fixtures.libvirtd_pids()

            def measure(k):
                domains = [dom] * k
                conn.domainListGetStats(domains, stats, flags)
                d0, c0, w0 = (fixtures.cpu_ns_of(pids),
                              time.process_time_ns(), time.perf_counter_ns())
                for _ in range(reps):
                    conn.domainListGetStats(domains, stats, flags)
                return ((time.process_time_ns() - c0) / reps / 1e3,
                        (fixtures.cpu_ns_of(pids) - d0) / reps / 1e3,
                        (time.perf_counter_ns() - w0) / reps / 1e3)

            one, many = measure(1), measure(count)
        finally:
            conn.close()
        per = [(m - o) / (count - 1) for m, o in zip(many, one, strict=True)]
        return {'count': count, 'client_fixed_us': one[0] - per[0],
                'client_per_domain_us': per[0],
                'libvirtd_fixed_us': one[1] - per[1],
                'libvirtd_per_domain_us': per[1],
                'wall_per_domain_us': per[2]}

    def __exit__(self, *exc):
        for g in self.guests:
            try:
                g.cleanup()
            except Exception:  # noqa: BLE001 - best effort clean-up
                pass
        self.guests = []
        return False
