"""How the Python client reads an address that names one gateway or several."""

from __future__ import annotations

import pytest

from grpc_gateway.client import channel_target


def test_one_gateway_or_a_dns_name_is_gRPC_s_target_as_it_is() -> None:
    assert channel_target("127.0.0.1:50051") == "127.0.0.1:50051"
    assert channel_target("dns:///jobs.internal:50051") == "dns:///jobs.internal:50051"


def test_several_gateways_by_ip_address_are_one_static_list() -> None:
    assert channel_target("10.0.0.5:50051, 10.0.0.6:50051") == "ipv4:10.0.0.5:50051,10.0.0.6:50051"
    assert channel_target("[::1]:50051,[::2]:50051") == "ipv6:[::1]:50051,[::2]:50051"


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("gw1.internal:50051,gw2.internal:50051", "use one DNS name"),
        ("10.0.0.5:50051,[::1]:50051", "not both"),
    ],
)
def test_an_address_gRPC_cannot_balance_over_is_refused_with_what_to_do(address: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        channel_target(address)
