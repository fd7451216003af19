"""A rootless podman user without touching the host: shared by
tests/test_podman.py and bench/containers.py (not a test module).

Each command runs as root in a private mount namespace (`unshare -m`), where
ROOTLESS_WRAP binds private copies of /etc/passwd, group, subuid and subgid
(a user the host does not have, with a range of subordinate ids that the
setuid newuidmap/newgidmap read) and a 0666 node of the fuse device over the
host's, then drops to the user with setpriv. Rootless podman's first command
leaves a pause process holding its user and mount namespaces (made from the
private one, so they have the bound files too); later commands join it.
`mount --make-rshared /` keeps rootless podman from warning that "/" is not
shared; the new peer group is the namespace's own.
"""

import os
import stat

ROOTLESS_WRAP = r'''
r=$1; uid=$2; gid=$3; shift 3
for f in passwd group subuid subgid; do
    mount --bind "$r/$f" "/etc/$f" || exit 125
done
mount --bind "$r/fuse" /dev/fuse || exit 125
mount --make-rshared / || exit 125
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"
'''


class RootlessUser:
    """A user not in the host's /etc/passwd (PW_NAME, uid = gid = PW_UID)
    with 65536 subordinate ids from SUBID_START."""

    def __init__(self, pw_name, pw_uid, subid_start):
        self.pw_name = pw_name
        self.pw_uid = self.pw_gid = pw_uid
        self.subid = (subid_start, 65536)
        self.dir = None

    def prepare(self, d, home):
        """D: the private files ROOTLESS_WRAP binds over the host's."""
        self.dir = d
        os.makedirs(d)
        extra = {
            "passwd": "%s:x:%d:%d::%s:/bin/sh\n" % (self.pw_name, self.pw_uid,
                                                    self.pw_gid, home),
            "group": "%s:x:%d:\n" % (self.pw_name, self.pw_gid),
            "subuid": "%s:%d:%d\n" % ((self.pw_name,) + self.subid),
            "subgid": "%s:%d:%d\n" % ((self.pw_name,) + self.subid),
        }
        for name, line in extra.items():
            host = ""
            if name in ("passwd", "group"):
                with open("/etc/" + name) as f:
                    host = f.read()
            with open(os.path.join(d, name), "w") as f:
                f.write(host + line)
            os.chmod(os.path.join(d, name), 0o644)
        node = os.path.join(d, "fuse")
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(10, 229))
        os.chmod(node, 0o666)

    def wrap(self, argv):
        """ARGV run as the user (once prepared)."""
        return ["unshare", "-m", "--propagation", "private", "sh", "-c",
                ROOTLESS_WRAP, "sh", self.dir, str(self.pw_uid),
                str(self.pw_gid)] + argv
