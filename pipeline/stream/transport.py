"""Faust's aiokafka transport, its consumer a static group member (`pipeline.kafka.membership`).

Why: with its table in local stores, a restarted Faust worker has every call it held; what
kept it waiting was the group, which hands the partitions of a worker killed without
leaving to nobody until the dead member's session times out. A static member
(`consumer_group_instance_id`) rejoining under the same instance id gets them back at once.
Faust's driver stops its consumer without the LeaveGroup request a static member needs to
leave on purpose; this consumer thread sends it, so a worker stopped on purpose still hands
its partitions over at once. Selected with the `cdrpipe-kafka://` scheme (`broker_consumer`).
"""

from __future__ import annotations

from faust.transport.consumer import ConsumerThread
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as driver

from pipeline.kafka.membership import leave

__all__ = ["SCHEME", "Transport"]

SCHEME = "cdrpipe-kafka"


class StaticMemberThread(driver.AIOKafkaConsumerThread):
    async def on_thread_stop(self) -> None:
        # The driver's own order (the method queue, then the consumer), with the leave
        # right before the consumer stops: nothing in between can rejoin the group.
        await ConsumerThread.on_thread_stop(self)
        consumer = self._consumer
        if consumer is None:
            return
        instance = self.app.conf.consumer_group_instance_id
        if instance:
            await leave(consumer, self.app.conf.id, instance)
        await consumer.stop()


class StaticMemberConsumer(driver.Consumer):
    def _new_consumer_thread(self) -> StaticMemberThread:
        return StaticMemberThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    Consumer = StaticMemberConsumer


TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
