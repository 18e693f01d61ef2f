"""Generated from proto/grpc_gateway/v1/jobs.proto by scripts/gen-proto. Do not edit."""
