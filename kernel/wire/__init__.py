"""The gRPC wire protocol (generated from ``oncofed.proto``) and its channel settings."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Both ends ping so that a dead peer behind a NAT or firewall is noticed in
# seconds, and allow messages large enough for model updates.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
SERVER_OPTIONS: list[tuple[str, int]] = [
    *CHANNEL_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    # A second coordinator on a port in use must fail, not share the port silently.
    ("grpc.so_reuseport", 0),
]

__all__ = ["CHANNEL_OPTIONS", "MAX_MESSAGE_BYTES", "SERVER_OPTIONS"]
