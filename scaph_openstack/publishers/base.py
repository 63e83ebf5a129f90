"""Plugin base for the ``scaph_openstack.publishers`` group."""

import abc


class Publisher(abc.ABC):

    name = None
    # Seconds between two publications; the ticker persists the ledger
    # before each, so this also paces the ledger's writes.
    min_interval = 0.0

    def start(self):
        """Called once before the first tick (mounts, sockets, ...)."""

    @abc.abstractmethod
    def publish(self, report):
        """Deliver one report.Report. Never read back what was written."""

    def stop(self):
        pass
