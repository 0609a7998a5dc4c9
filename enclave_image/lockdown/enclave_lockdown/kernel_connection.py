"""The kernel websocket connection with an outbound size cap on every kernel message."""
from __future__ import annotations

from typing import Any

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

from .audit_log import log_event
from .kernel_messages import withhold_oversized


def _part_size(part: Any) -> int:
    # Parts are bytes when pyzmq copies, zmq.Frame otherwise (and memoryview-like in replays).
    try:
        return len(part)
    except TypeError:
        return len(part.bytes)


class CappedKernelConnection(ZMQChannelsWebsocketConnection):
    """Replaces any kernel message over the policy's cap by a notice before it reaches the browser.

    The check runs on the raw ZMQ frames, before the parent class's IOPub rate limit and before
    the message is re-encoded for either websocket protocol (JSON or v1 binary), so both
    protocols and the replay buffer of a reconnecting browser go through it.
    """

    def handle_outgoing_message(self, stream: Any, outgoing_msg: list[Any]) -> None:
        policy = self.websocket_handler.settings["enclave_lockdown"]
        cap = policy.max_output_bytes
        idents, msg_list = self.session.feed_identities(outgoing_msg)
        size = sum(_part_size(part) for part in msg_list)
        if size <= cap:
            super().handle_outgoing_message(stream, outgoing_msg)
            return

        channel = stream if isinstance(stream, str) else getattr(stream, "channel", None)
        try:
            msg = self.session.deserialize(msg_list)
        except Exception as exc:  # a malformed or badly signed message is not forwarded at all
            self.log.warning("enclave lockdown: dropping unreadable %s-byte kernel message: %s", size, exc)
            return
        replacement = withhold_oversized(msg, size, cap)
        user = getattr(self.websocket_handler.current_user, "username", None)
        log_event(self.log, "kernel_output_capped", user=user, kernel_id=self.kernel_id,
                  channel=channel, msg_type=msg.get("msg_type"), size=size, cap=cap,
                  action="replaced" if replacement else "dropped")
        if replacement is None:
            return
        super().handle_outgoing_message(stream, list(idents) + self.session.serialize(replacement))
