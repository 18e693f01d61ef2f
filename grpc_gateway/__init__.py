"""The gRPC transport over `taskapp.service`: `taskapp.v1.JobService` plus health and reflection."""
