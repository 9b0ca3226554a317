"""Webhook targets: only public addresses are reachable (tenant_api.webhooks.targets)."""

from ipaddress import ip_address

import pytest

from tenant_api.webhooks import targets


@pytest.mark.parametrize("address,public", [
    ("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False),
    ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False),  # noqa: S104
    ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False),
    ("224.0.0.1", False), ("240.0.0.1", False)])
def test_only_public_addresses_are_reachable(address, public):
    assert targets.is_public(ip_address(address)) is public
