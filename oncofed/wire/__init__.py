"""The gRPC wire protocol (generated from ``oncofed.proto``)."""
