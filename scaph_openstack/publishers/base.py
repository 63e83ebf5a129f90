"""Plugin base for the ``scaph_openstack.publishers`` group."""

import abc


class Publisher(abc.ABC):

    name = None

    def start(self):
        """Called once before the first tick (mounts, sockets, ...)."""

    @abc.abstractmethod
    def publish(self, report):
        """Deliver one TickReport. Never read back what was written."""

    def stop(self):
        pass
