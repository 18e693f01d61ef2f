from __future__ import annotations

from grpc_gateway.server import main

if __name__ == "__main__":
    main()
