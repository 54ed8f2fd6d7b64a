"""Extended attributes: user.*, trusted.*, security.capability, the create and
replace flags, and where user.* is refused."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from tests.posix.helpers import ROOT_ONLY, errno_of
from tests.posix.world import ORIGINS, Chain

pytestmark = ROOT_ONLY


@pytest.mark.parametrize("origin", ORIGINS)
def test_xattr_of_the_layer_is_visible(chain: Chain, origin: str) -> None:
    for what in ("file", "dir"):
        p = chain.obj(origin, what)
        assert os.listxattr(p) == ["user.layer"]
        assert os.getxattr(p, "user.layer") == origin.encode()


@pytest.mark.parametrize("origin", ORIGINS)
def test_user_xattr_set_get_list_remove(chain: Chain, origin: str) -> None:
    for what in ("file", "dir"):
        p = chain.obj(origin, what)
        os.setxattr(p, "user.one", b"1")
        os.setxattr(p, "user.two", b"\0binary\xff")
        os.setxattr(p, "user.layer", b"replaced")
        assert sorted(os.listxattr(p)) == ["user.layer", "user.one", "user.two"]
        assert os.getxattr(p, "user.two") == b"\0binary\xff"
        assert os.getxattr(p, "user.layer") == b"replaced"
        os.removexattr(p, "user.one")
        os.removexattr(p, "user.layer")
        assert os.listxattr(p) == ["user.two"]
        assert errno_of(lambda p=p: os.getxattr(p, "user.one")) == errno.ENODATA
    child = chain.commit_and_child()
    assert os.listxattr(child / f"{origin}_file") == ["user.two"]


@pytest.mark.parametrize("origin", ORIGINS)
def test_xattr_with_empty_and_large_values(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    os.setxattr(p, "user.empty", b"")
    os.setxattr(p, "user.large", b"v" * 60000)
    assert os.getxattr(p, "user.empty") == b""
    assert os.getxattr(p, "user.large") == b"v" * 60000


@pytest.mark.parametrize("origin", ORIGINS)
def test_trusted_xattr_round_trips(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    os.setxattr(p, "trusted.overlay.opaque", b"y")
    assert os.getxattr(p, "trusted.overlay.opaque") == b"y"
    assert "trusted.overlay.opaque" in os.listxattr(p)
    os.removexattr(p, "trusted.overlay.opaque")
    assert "trusted.overlay.opaque" not in os.listxattr(p)


def _caps(permitted: int) -> bytes:
    # struct vfs_cap_data, revision 2, effective flag set.
    return struct.pack("<IIIII", 0x02000001, permitted, 0, 0, 0)


@pytest.mark.parametrize("origin", ORIGINS)
def test_security_capability_round_trips(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "exec")
    caps = _caps(1 << 10)  # CAP_NET_BIND_SERVICE
    os.setxattr(p, "security.capability", caps)
    assert os.getxattr(p, "security.capability") == caps
    assert "security.capability" in os.listxattr(p)
    child = chain.commit_and_child()
    assert os.getxattr(child / p.name, "security.capability") == caps
    os.removexattr(child / p.name, "security.capability")
    assert errno_of(lambda: os.getxattr(child / p.name, "security.capability")) == errno.ENODATA


@pytest.mark.parametrize("origin", ORIGINS)
def test_write_drops_security_capability(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "exec")
    os.setxattr(p, "security.capability", _caps(1 << 10))
    with open(p, "ab") as f:
        f.write(b"# patched\n")
    assert errno_of(lambda: os.getxattr(p, "security.capability")) == errno.ENODATA


@pytest.mark.parametrize("origin", ORIGINS)
def test_xattr_create_flag_on_existing_name_is_eexist(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    e = errno_of(lambda: os.setxattr(p, "user.layer", b"x", os.XATTR_CREATE))
    assert e == errno.EEXIST
    os.setxattr(p, "user.new", b"x", os.XATTR_CREATE)
    assert os.getxattr(p, "user.new") == b"x"


@pytest.mark.parametrize("origin", ORIGINS)
def test_xattr_replace_flag_on_missing_name_is_enodata(chain: Chain, origin: str) -> None:
    p = chain.obj(origin, "file")
    assert errno_of(lambda: os.setxattr(p, "user.none", b"x", os.XATTR_REPLACE)) == errno.ENODATA
    os.setxattr(p, "user.layer", b"again", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.layer") == b"again"


@pytest.mark.parametrize("origin", ORIGINS)
def test_removexattr_of_missing_name_is_enodata(chain: Chain, origin: str) -> None:
    assert errno_of(lambda: os.removexattr(chain.obj(origin, "file"), "user.none")) == \
        errno.ENODATA


@pytest.mark.parametrize("origin", ORIGINS)
def test_user_xattr_on_symlink_or_fifo_is_refused(chain: Chain, origin: str) -> None:
    e = errno_of(lambda: os.setxattr(chain.obj(origin, "link"), "user.x", b"1",
                                     follow_symlinks=False))
    assert e == errno.EPERM
    assert errno_of(lambda: os.setxattr(chain.obj(origin, "fifo"), "user.x", b"1")) == \
        errno.EPERM
