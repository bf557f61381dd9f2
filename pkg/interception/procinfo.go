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
	pid := scanWriters(os.Getpid(), func(fd string) bool {
		target, err := os.Readlink(fd)
		return err == nil && target == path
	})
	if pid == 0 {
		return 0, ""
	}
	return pid, exeOf(pid)
}

// scanWriters returns a process other than except that has a descriptor open for writing
// that match accepts (given its /proc/PID/fd/N path), or 0 if there is none. It scans
// every process's descriptors.
func scanWriters(except int, match func(fd string) bool) int {
	d, err := os.Open(procRoot)
	if err != nil {
		return 0
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil || pid == except {
			continue
		}
		if writesTo(n, match) {
			return pid
		}
	}
	return 0
}

// writesTo reports whether process pid has a descriptor open for writing that match
// accepts (given its /proc/PID/fd/N path).
func writesTo(pid string, match func(fd string) bool) bool {
	fdDir := procRoot + "/" + pid + "/fd"
	d, err := os.Open(fdDir)
	if err != nil {
		return false
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		if match(fdDir+"/"+n) && openForWriting(procRoot+"/"+pid+"/fdinfo/"+n) {
			return true
		}
	}
	return false
}

// isInode returns a match for scanWriters and writesTo that accepts descriptors of the
// inode (dev, ino). stat of /proc/PID/fd/N does not open the file.
func isInode(dev, ino uint64) func(fd string) bool {
	return func(fd string) bool {
		var st unix.Stat_t
		return unix.Stat(fd, &st) == nil && st.Dev == dev && st.Ino == ino
	}
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
// It reads only pid's descriptor table.
func holdsForWriting(pid int, dev, ino uint64) bool {
	return writesTo(strconv.Itoa(pid), isInode(dev, ino))
}

// otherWriter reports whether a process other than except has the inode (dev, ino) open
// for writing. It scans every process's descriptors: it is meant for the rare open of a
// file that is being written, never for a hot path.
func otherWriter(except int, dev, ino uint64) bool {
	return scanWriters(except, isInode(dev, ino)) != 0
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
