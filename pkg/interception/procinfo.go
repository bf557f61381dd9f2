package interception

import (
	"bufio"
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
