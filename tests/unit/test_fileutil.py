"""fileutil.update_at: share files keep their inode, or get the right
content in a new one, never a torn or shortened mix."""

import json
import os
import stat

import pytest

from scaph_openstack import fileutil


@pytest.fixture
def dir_fd(tmp_path):
    fd = fileutil.open_dir(str(tmp_path))
    yield fd
    os.close(fd)


def write(path, data, mode=0o644):
    # 0644 before: a non-root run must be able to open it for writing.
    path.write_bytes(data)
    path.chmod(mode)
    return path.stat().st_ino


def test_a_growing_counter_is_written_in_place(tmp_path, dir_fd):
    inode = write(tmp_path / 'energy_uj', b'999000000\n')
    assert fileutil.update_at(dir_fd, 'energy_uj', b'1000000000\n',
                              mode=0o444)
    st = (tmp_path / 'energy_uj').stat()
    assert (tmp_path / 'energy_uj').read_bytes() == b'1000000000\n'
    assert st.st_ino == inode
    assert stat.S_IMODE(st.st_mode) == 0o444


def test_reading_to_the_end_in_two_reads_can_join_two_states(tmp_path,
                                                              dir_fd):
    """What doc/share.md says readers of the share may see: Python's
    f.read() reads up to the size fstat gave, then reads again for the
    end. A counter that gained a digit in place between the two reads
    comes back as the old text and the new one's last byte; one read(2)
    sees one state."""
    write(tmp_path / 'energy_uj', b'7407023\n')
    fd = os.open(tmp_path / 'energy_uj', os.O_RDONLY)
    try:
        first = os.read(fd, 9)                   # readall: size + 1
        assert fileutil.update_at(dir_fd, 'energy_uj', b'15407023\n')
        joined = first + os.read(fd, 1)                     # the end probe
        assert joined == b'7407023\n\n'
        assert int(joined) == 7407023           # white space stripped
        assert os.pread(fd, 1 << 20, 0) == b'15407023\n'
    finally:
        os.close(fd)


def test_a_missing_file_is_created_with_its_mode(tmp_path, dir_fd):
    assert not fileutil.update_at(dir_fd, 'name', b'package-0\n',
                                  mode=0o444)
    assert (tmp_path / 'name').read_bytes() == b'package-0\n'
    assert stat.S_IMODE((tmp_path / 'name').stat().st_mode) == 0o444


def test_shorter_content_without_padding_gets_a_new_inode(tmp_path, dir_fd):
    # A counter that went back (a new epoch starts at zero): the old
    # tail must not survive as digits of the new value.
    inode = write(tmp_path / 'energy_uj', b'123456789\n')
    assert not fileutil.update_at(dir_fd, 'energy_uj', b'0\n', mode=0o444)
    assert (tmp_path / 'energy_uj').read_bytes() == b'0\n'
    assert (tmp_path / 'energy_uj').stat().st_ino != inode


def test_shorter_json_is_padded_in_place_and_still_parses(tmp_path, dir_fd):
    long_doc = json.dumps({'updated': 1764543210.123456, 'x': 'y' * 40})
    short_doc = json.dumps({'updated': 5.0})
    inode = write(tmp_path / 'meta.json', long_doc.encode() + b'\n')
    assert fileutil.update_at(dir_fd, 'meta.json',
                              short_doc.encode() + b'\n', mode=0o444,
                              pad=b' ')
    data = (tmp_path / 'meta.json').read_bytes()
    assert len(data) == len(long_doc) + 1
    assert json.loads(data) == {'updated': 5.0}
    assert (tmp_path / 'meta.json').stat().st_ino == inode


def test_a_symlink_is_replaced_not_followed(tmp_path, dir_fd):
    target = tmp_path / 'elsewhere'
    target.write_bytes(b'precious\n')
    (tmp_path / 'energy_uj').symlink_to(target)
    assert not fileutil.update_at(dir_fd, 'energy_uj', b'42000000\n',
                                  mode=0o444)
    assert target.read_bytes() == b'precious\n'
    assert not (tmp_path / 'energy_uj').is_symlink()
    assert (tmp_path / 'energy_uj').read_bytes() == b'42000000\n'


def test_a_hard_link_is_replaced_not_written_through(tmp_path, dir_fd):
    other = tmp_path / 'other'
    other.write_bytes(b'precious\n')
    os.link(other, tmp_path / 'energy_uj')
    assert not fileutil.update_at(dir_fd, 'energy_uj', b'42000000000\n',
                                  mode=0o444)
    assert other.read_bytes() == b'precious\n'
    assert (tmp_path / 'energy_uj').read_bytes() == b'42000000000\n'


def test_a_fifo_is_replaced_without_blocking(tmp_path, dir_fd):
    os.mkfifo(tmp_path / 'energy_uj')
    assert not fileutil.update_at(dir_fd, 'energy_uj', b'1\n', mode=0o444)
    assert (tmp_path / 'energy_uj').read_bytes() == b'1\n'
