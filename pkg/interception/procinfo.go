package interception

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// procRoot is where process information is read from.
const procRoot = "/proc"

// exeOf returns the executable of process pid, or "" if it cannot be read (the process
// exited, or it is a kernel thread).
func exeOf(pid int) string {
	exe, err := os.Readlink(filepath.Join(procRoot, strconv.Itoa(pid), "exe"))
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(exe, " (deleted)")
}

// findWriter returns a process other than the caller that has path open for writing, and
// its executable, or 0 and "" if there is none. It scans /proc, so it is meant for the rare
// creation of a file in a download directory, never for a hot path.
func findWriter(path string) (int, string) {
	self := os.Getpid()
	procs, err := os.ReadDir(procRoot)
	if err != nil {
		return 0, ""
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		fdDir := filepath.Join(procRoot, p.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil || target != path {
				continue
			}
			if openForWriting(filepath.Join(procRoot, p.Name(), "fdinfo", fd.Name())) {
				return pid, exeOf(pid)
			}
		}
	}
	return 0, ""
}

// openForWriting reads the flags line of a /proc/PID/fdinfo/FD file.
func openForWriting(fdinfo string) bool {
	f, err := os.Open(fdinfo)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "flags:")
		if !ok {
			continue
		}
		flags, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
		if err != nil {
			return false
		}
		mode := flags & unix.O_ACCMODE
		return mode == unix.O_WRONLY || mode == unix.O_RDWR
	}
	return false
}

// holdsForWriting reports whether process pid has the inode (dev, ino) open for writing.
// It reads only pid's descriptor table: stat of /proc/PID/fd/N does not open the file.
func holdsForWriting(pid int, dev, ino uint64) bool {
	return writesInode(strconv.Itoa(pid), dev, ino)
}

func writesInode(pid string, dev, ino uint64) bool {
	fdDir := procRoot + "/" + pid + "/fd"
	d, err := os.Open(fdDir)
	if err != nil {
		return false
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		var st unix.Stat_t
		if unix.Stat(fdDir+"/"+n, &st) != nil || st.Dev != dev || st.Ino != ino {
			continue
		}
		if openForWriting(procRoot + "/" + pid + "/fdinfo/" + n) {
			return true
		}
	}
	return false
}

// otherWriter reports whether a process other than except has the inode (dev, ino) open
// for writing. It scans every process's descriptors: it is meant for the rare open of a
// file that is being written, never for a hot path.
func otherWriter(except int, dev, ino uint64) bool {
	d, err := os.Open(procRoot)
	if err != nil {
		return false
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	other := strconv.Itoa(except)
	for _, n := range names {
		if n == other || n == "" || n[0] < '0' || n[0] > '9' {
			continue
		}
		if writesInode(n, dev, ino) {
			return true
		}
	}
	return false
}

// hasWriters reports whether any process (the one whose open is being asked about
// included: the kernel takes write access before it asks) has the file open as fd open
// for writing. It tries to take a read lease, which the kernel refuses with EAGAIN while
// the file is open for writing, and drops it at once. fd must be open read-only; it needs
// CAP_LEASE for files of other users. An error means leases are unavailable here.
func hasWriters(fd int) (bool, error) {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_RDLCK)
	switch {
	case err == nil:
		unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK)
		return false, nil
	case errors.Is(err, unix.EAGAIN):
		return true, nil
	}
	return false, err
}
