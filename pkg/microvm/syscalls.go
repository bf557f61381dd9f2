package microvm

//go:generate sh -c "{ echo '// Code generated from x/sys/unix zsysnum_linux_amd64.go by go generate; DO NOT EDIT.'; echo; echo 'package microvm'; echo; echo '// syscallNames maps x86-64 Linux system call numbers to their names, for statistics.'; echo 'var syscallNames = [...]string{'; grep -E '^\\s+SYS_[A-Z0-9_]+\\s+= [0-9]+' $(go env GOMODCACHE)/golang.org/x/sys@v0.50.0/unix/zsysnum_linux_amd64.go | awk '{n=$1; sub(\"SYS_\",\"\",n); printf \"\\t%s: \\\"%s\\\",\\n\", $3, tolower(n)}'; echo '}'; } > zsysnames.go && gofmt -w zsysnames.go"

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// args are the six system call arguments (RDI, RSI, RDX, R10, R8, R9).
type args [6]uint64

// syscallName returns the name of system call nr.
func syscallName(nr uint64) string {
	if nr < uint64(len(syscallNames)) && syscallNames[nr] != "" {
		return syscallNames[nr]
	}
	return fmt.Sprintf("syscall_%d", nr)
}

// syscall serves the system call the thread's vCPU stopped at.
func (t *thread) syscall(v *kvmhv.VCPU) {
	r := &v.Regs
	nr := r.RAX
	a := args{r.RDI, r.RSI, r.RDX, r.R10, r.R8, r.R9}
	res, handled := t.dispatch(v, nr, a)
	if !handled {
		t.vm.stats.deny(nr)
		if isSocketCall(nr) {
			res = errnoResult(unix.EACCES)
		} else {
			res = errnoResult(unix.ENOSYS)
		}
	} else {
		t.vm.stats.serve(nr)
	}
	if !t.exited.Load() {
		v.CompleteSyscall(res)
	}
}

// isSocketCall reports whether nr creates or uses network sockets: refused with EACCES.
func isSocketCall(nr uint64) bool {
	switch nr {
	case unix.SYS_SOCKET, unix.SYS_SOCKETPAIR, unix.SYS_CONNECT, unix.SYS_ACCEPT, unix.SYS_ACCEPT4,
		unix.SYS_BIND, unix.SYS_LISTEN, unix.SYS_SENDTO, unix.SYS_RECVFROM, unix.SYS_SENDMSG,
		unix.SYS_RECVMSG, unix.SYS_SENDMMSG, unix.SYS_RECVMMSG, unix.SYS_SHUTDOWN,
		unix.SYS_GETSOCKNAME, unix.SYS_GETPEERNAME, unix.SYS_SETSOCKOPT, unix.SYS_GETSOCKOPT:
		return true
	}
	return false
}

// ret converts a value-or-errno pair to the register result.
func ret(v uint64, e unix.Errno) uint64 {
	if e != 0 {
		return errnoResult(e)
	}
	return v
}

// dispatch runs the handler for nr. handled is false for calls the personality does not
// serve (they fail with ENOSYS, or EACCES for sockets).
func (t *thread) dispatch(v *kvmhv.VCPU, nr uint64, a args) (res uint64, handled bool) {
	vm := t.vm
	switch nr {
	// Files.
	case unix.SYS_READ:
		return ret(t.read(int(a[0]), a[1], a[2])), true
	case unix.SYS_WRITE:
		return ret(t.write(int(a[0]), a[1], a[2])), true
	case unix.SYS_PREAD64:
		return ret(t.pread(int(a[0]), a[1], a[2], int64(a[3]))), true
	case unix.SYS_PWRITE64:
		return ret(t.pwrite(int(a[0]), a[1], a[2], int64(a[3]))), true
	case unix.SYS_READV:
		return ret(t.readv(int(a[0]), a[1], a[2], -1)), true
	case unix.SYS_WRITEV:
		return ret(t.writev(int(a[0]), a[1], a[2], -1)), true
	case unix.SYS_PREADV:
		if int64(a[3]) < 0 {
			return errnoResult(unix.EINVAL), true // not "the current offset", as readv
		}
		return ret(t.readv(int(a[0]), a[1], a[2], int64(a[3]))), true
	case unix.SYS_PWRITEV:
		if int64(a[3]) < 0 {
			return errnoResult(unix.EINVAL), true
		}
		return ret(t.writev(int(a[0]), a[1], a[2], int64(a[3]))), true
	case unix.SYS_OPEN:
		return ret(t.openat(unix.AT_FDCWD, a[0], int(a[1]), uint32(a[2]))), true
	case unix.SYS_CREAT:
		return ret(t.openat(unix.AT_FDCWD, a[0], unix.O_CREAT|unix.O_WRONLY|unix.O_TRUNC, uint32(a[1]))), true
	case unix.SYS_OPENAT:
		return ret(t.openat(int32(a[0]), a[1], int(a[2]), uint32(a[3]))), true
	case unix.SYS_CLOSE:
		return ret(0, vm.fds.close(int(a[0]))), true
	case unix.SYS_CLOSE_RANGE:
		return ret(0, t.closeRange(a[0], a[1], a[2])), true
	case unix.SYS_LSEEK:
		return ret(t.lseek(int(a[0]), int64(a[1]), int(a[2]))), true
	case unix.SYS_FSTAT:
		return ret(0, t.fstat(int(a[0]), a[1])), true
	case unix.SYS_STAT:
		return ret(0, t.fstatat(unix.AT_FDCWD, a[0], a[1], 0)), true
	case unix.SYS_LSTAT:
		return ret(0, t.fstatat(unix.AT_FDCWD, a[0], a[1], unix.AT_SYMLINK_NOFOLLOW)), true
	case unix.SYS_NEWFSTATAT:
		return ret(0, t.fstatat(int32(a[0]), a[1], a[2], int(a[3]))), true
	case unix.SYS_STATX:
		return ret(0, t.statx(int32(a[0]), a[1], int(a[2]), a[4])), true
	case unix.SYS_GETDENTS64:
		return ret(t.getdents64(int(a[0]), a[1], a[2])), true
	case unix.SYS_READLINK:
		return ret(t.readlinkat(unix.AT_FDCWD, a[0], a[1], a[2])), true
	case unix.SYS_READLINKAT:
		return ret(t.readlinkat(int32(a[0]), a[1], a[2], a[3])), true
	case unix.SYS_ACCESS:
		return ret(0, t.faccessat(unix.AT_FDCWD, a[0], uint32(a[1]))), true
	case unix.SYS_FACCESSAT, unix.SYS_FACCESSAT2:
		return ret(0, t.faccessat(int32(a[0]), a[1], uint32(a[2]))), true
	case unix.SYS_DUP:
		return ret(t.dup(int(a[0]), -1, 0, false)), true
	case unix.SYS_DUP2:
		// Both descriptors are unsigned int: a "negative" newfd is past the limit (EBADF),
		// not a request for the lowest free one.
		oldfd, newfd := int(uint32(a[0])), int(uint32(a[1]))
		if oldfd == newfd {
			if _, ok := vm.fds.path(oldfd); !ok {
				return errnoResult(unix.EBADF), true
			}
			return uint64(newfd), true
		}
		return ret(t.dup(oldfd, newfd, 0, false)), true
	case unix.SYS_DUP3:
		oldfd, newfd := int(uint32(a[0])), int(uint32(a[1]))
		if oldfd == newfd || int32(a[2])&^unix.O_CLOEXEC != 0 {
			return errnoResult(unix.EINVAL), true
		}
		return ret(t.dup(oldfd, newfd, 0, a[2]&unix.O_CLOEXEC != 0)), true
	case unix.SYS_FCNTL:
		return ret(t.fcntl(int(a[0]), int(a[1]), a[2])), true
	case unix.SYS_IOCTL:
		return ret(t.ioctl(int(a[0]), a[1], a[2])), true
	case unix.SYS_PIPE:
		return ret(0, t.pipe2(a[0], 0)), true
	case unix.SYS_PIPE2:
		return ret(0, t.pipe2(a[0], int(a[1]))), true
	case unix.SYS_EVENTFD2:
		return ret(t.eventfd(uint32(a[0]), int(a[1]))), true
	case unix.SYS_EVENTFD:
		return ret(t.eventfd(uint32(a[0]), 0)), true
	case unix.SYS_EPOLL_CREATE1:
		return ret(t.epollCreate(int(a[0]))), true
	case unix.SYS_EPOLL_CREATE:
		if int32(a[0]) <= 0 {
			return errnoResult(unix.EINVAL), true
		}
		return ret(t.epollCreate(0)), true
	case unix.SYS_EPOLL_CTL:
		return ret(0, t.epollCtl(int(a[0]), int(a[1]), int(a[2]), a[3])), true
	case unix.SYS_EPOLL_WAIT, unix.SYS_EPOLL_PWAIT:
		return ret(t.epollWait(int(a[0]), a[1], int(a[2]), int(int32(a[3])))), true
	case unix.SYS_POLL:
		return ret(t.poll(a[0], a[1], time.Duration(int32(a[2]))*time.Millisecond)), true
	case unix.SYS_PPOLL:
		timeout := time.Duration(-1)
		if a[2] != 0 {
			sec, nsec, e := t.readTimespec(a[2])
			if e != 0 {
				return errnoResult(e), true
			}
			timeout = timespecDuration(sec, nsec)
		}
		return ret(t.poll(a[0], a[1], timeout)), true
	case unix.SYS_SENDFILE:
		return ret(t.sendfile(int(a[0]), int(a[1]), a[2], a[3])), true
	case unix.SYS_FTRUNCATE:
		return ret(0, t.ftruncate(int(a[0]), int64(a[1]))), true
	case unix.SYS_TRUNCATE:
		return ret(0, t.truncate(a[0], int64(a[1]))), true
	case unix.SYS_MKDIR:
		return ret(0, t.mkdirat(unix.AT_FDCWD, a[0], uint32(a[1]))), true
	case unix.SYS_MKDIRAT:
		return ret(0, t.mkdirat(int32(a[0]), a[1], uint32(a[2]))), true
	case unix.SYS_UNLINK:
		return ret(0, t.unlinkat(unix.AT_FDCWD, a[0], 0)), true
	case unix.SYS_RMDIR:
		return ret(0, t.unlinkat(unix.AT_FDCWD, a[0], unix.AT_REMOVEDIR)), true
	case unix.SYS_UNLINKAT:
		return ret(0, t.unlinkat(int32(a[0]), a[1], int(a[2]))), true
	case unix.SYS_RENAME:
		return ret(0, t.renameat(unix.AT_FDCWD, a[0], unix.AT_FDCWD, a[1], 0)), true
	case unix.SYS_RENAMEAT:
		return ret(0, t.renameat(int32(a[0]), a[1], int32(a[2]), a[3], 0)), true
	case unix.SYS_RENAMEAT2:
		return ret(0, t.renameat(int32(a[0]), a[1], int32(a[2]), a[3], uint(a[4]))), true
	case unix.SYS_SYMLINK:
		return ret(0, t.symlinkat(a[0], unix.AT_FDCWD, a[1])), true
	case unix.SYS_SYMLINKAT:
		return ret(0, t.symlinkat(a[0], int32(a[1]), a[2])), true
	case unix.SYS_LINK:
		return ret(0, t.linkat(unix.AT_FDCWD, a[0], unix.AT_FDCWD, a[1], 0)), true
	case unix.SYS_LINKAT:
		return ret(0, t.linkat(int32(a[0]), a[1], int32(a[2]), a[3], int(a[4]))), true
	case unix.SYS_CHMOD:
		return ret(0, t.fchmodat(unix.AT_FDCWD, a[0], uint32(a[1]))), true
	case unix.SYS_FCHMODAT:
		return ret(0, t.fchmodat(int32(a[0]), a[1], uint32(a[2]))), true
	case unix.SYS_FCHMOD:
		return ret(0, t.fchmod(int(a[0]), uint32(a[1]))), true
	case unix.SYS_CHOWN, unix.SYS_LCHOWN, unix.SYS_FCHOWN, unix.SYS_FCHOWNAT:
		return errnoResult(unix.EPERM), true
	case unix.SYS_UTIMENSAT:
		return ret(0, t.utimensat(int32(a[0]), a[1], a[2], int(a[3]))), true
	case unix.SYS_GETCWD:
		return ret(t.getcwd(a[0], a[1])), true
	case unix.SYS_CHDIR:
		return ret(0, t.chdir(a[0])), true
	case unix.SYS_FCHDIR:
		return ret(0, t.fchdir(int(a[0]))), true
	case unix.SYS_UMASK:
		vm.threadMu.Lock()
		old := vm.umask
		vm.umask = uint32(a[0]) & 0o777
		vm.threadMu.Unlock()
		return uint64(old), true
	case unix.SYS_FSYNC, unix.SYS_FDATASYNC, unix.SYS_SYNCFS, unix.SYS_FADVISE64, unix.SYS_FLOCK:
		if _, e := t.file(int(a[0])); e != 0 {
			return errnoResult(e), true
		}
		return 0, true
	case unix.SYS_SYNC:
		return 0, true
	case unix.SYS_GETXATTR, unix.SYS_LGETXATTR:
		return ret(t.getxattr(pathCall, a[0], nr == unix.SYS_GETXATTR, a[1], a[2], a[3])), true
	case unix.SYS_FGETXATTR:
		return ret(t.getxattr(int(int32(a[0])), 0, false, a[1], a[2], a[3])), true
	case unix.SYS_LISTXATTR, unix.SYS_LLISTXATTR:
		return ret(t.listxattr(pathCall, a[0], nr == unix.SYS_LISTXATTR, a[1], a[2])), true
	case unix.SYS_FLISTXATTR:
		return ret(t.listxattr(int(int32(a[0])), 0, false, a[1], a[2])), true
	case unix.SYS_SETXATTR, unix.SYS_LSETXATTR:
		return ret(0, t.setxattr(pathCall, a[0], nr == unix.SYS_SETXATTR, a[1], a[2], a[3], int(int32(a[4])), false)), true
	case unix.SYS_FSETXATTR:
		return ret(0, t.setxattr(int(int32(a[0])), 0, false, a[1], a[2], a[3], int(int32(a[4])), false)), true
	case unix.SYS_REMOVEXATTR, unix.SYS_LREMOVEXATTR:
		return ret(0, t.setxattr(pathCall, a[0], nr == unix.SYS_REMOVEXATTR, a[1], 0, 0, 0, true)), true
	case unix.SYS_FREMOVEXATTR:
		return ret(0, t.setxattr(int(int32(a[0])), 0, false, a[1], 0, 0, 0, true)), true
	case unix.SYS_STATFS:
		return ret(0, t.statfs(a[0], a[1])), true
	case unix.SYS_FSTATFS:
		return ret(0, t.fstatfs(int(int32(a[0])), a[1])), true

	// Memory.
	case unix.SYS_BRK:
		return vm.mm.setBrk(a[0]), true
	case unix.SYS_MMAP:
		return ret(t.mmap(a[0], a[1], a[2], int(a[3]), int(int32(a[4])), a[5])), true
	case unix.SYS_MUNMAP:
		return ret(0, vm.mm.munmap(a[0], a[1])), true
	case unix.SYS_MPROTECT:
		p, ok := protFromLinux(a[2])
		if !ok {
			return errnoResult(unix.EINVAL), true
		}
		return ret(0, vm.mm.mprotect(a[0], a[1], p)), true
	case unix.SYS_MREMAP:
		return ret(vm.mm.mremap(a[0], a[1], a[2], int(a[3]), a[4])), true
	case unix.SYS_MADVISE:
		if a[2] == unix.MADV_DONTNEED {
			return ret(0, vm.mm.dontneed(a[0], a[1])), true
		}
		return 0, true

	// Threads and synchronization.
	case unix.SYS_ARCH_PRCTL:
		return ret(t.archPrctl(v, a[0], a[1])), true
	case unix.SYS_SET_TID_ADDRESS:
		t.clearTID = a[0]
		return uint64(t.tid), true
	case unix.SYS_SET_ROBUST_LIST:
		return 0, true
	case unix.SYS_CLONE:
		if a[0]&threadFlags != threadFlags {
			return 0, false // a new process, which the personality does not provide: denied
		}
		return ret(t.clone(v, a[0], a[1], a[2], a[3], a[4])), true
	case unix.SYS_FUTEX:
		return ret(t.futex(a)), true
	case unix.SYS_SCHED_YIELD:
		return 0, true
	case unix.SYS_SCHED_GETAFFINITY:
		return ret(t.schedGetaffinity(a[1], a[2])), true
	case unix.SYS_EXIT:
		// The loop ends, then its caller finishes the exit (exitThread).
		t.exitCode, t.exitCalled = int(a[0]&0xff), true
		t.exited.Store(true)
		return 0, true
	case unix.SYS_EXIT_GROUP:
		t.exited.Store(true)
		vm.terminate(exitStatus{code: int(a[0] & 0xff)})
		return 0, true

	// Signals.
	case unix.SYS_RT_SIGACTION:
		return ret(0, t.rtSigaction(int(a[0]), a[1], a[2], a[3])), true
	case unix.SYS_RT_SIGPROCMASK:
		return ret(0, t.rtSigprocmask(int(a[0]), a[1], a[2], a[3])), true
	case unix.SYS_SIGALTSTACK:
		return ret(0, t.sigaltstack(a[0], a[1])), true
	case unix.SYS_TGKILL:
		return ret(0, t.kill(int(a[0]), int(a[1]), int(a[2]))), true
	case unix.SYS_TKILL:
		return ret(0, t.kill(guestPID, int(a[0]), int(a[1]))), true
	case unix.SYS_KILL:
		return ret(0, t.kill(int(int32(a[0])), 0, int(a[1]))), true
	case unix.SYS_RT_SIGRETURN:
		vm.terminate(exitStatus{signal: int(unix.SIGSEGV), reason: "SIGSEGV: rt_sigreturn without a signal frame"})
		t.exited.Store(true)
		return 0, true

	// Time.
	case unix.SYS_CLOCK_GETTIME:
		return ret(0, t.clockGettime(int(a[0]), a[1])), true
	case unix.SYS_CLOCK_GETRES:
		return ret(0, t.clockGetres(int(a[0]), a[1])), true
	case unix.SYS_GETTIMEOFDAY:
		return ret(0, t.gettimeofday(a[0])), true
	case unix.SYS_TIME:
		return ret(t.time(a[0])), true
	case unix.SYS_NANOSLEEP:
		return ret(0, t.nanosleep(unix.CLOCK_MONOTONIC, 0, a[0])), true
	case unix.SYS_CLOCK_NANOSLEEP:
		return ret(0, t.nanosleep(int(a[0]), int(a[1]), a[2])), true

	// Identity and limits.
	case unix.SYS_GETPID, unix.SYS_GETPGRP, unix.SYS_GETSID:
		return guestPID, true
	case unix.SYS_GETPPID:
		return 0, true
	case unix.SYS_GETTID:
		return uint64(t.tid), true
	case unix.SYS_GETUID, unix.SYS_GETEUID:
		return guestUID, true
	case unix.SYS_GETGID, unix.SYS_GETEGID:
		return guestGID, true
	case unix.SYS_GETRESUID, unix.SYS_GETRESGID:
		return ret(0, t.getres(a[0], a[1], a[2])), true
	case unix.SYS_GETGROUPS:
		return 0, true
	case unix.SYS_SETUID, unix.SYS_SETGID, unix.SYS_SETREUID, unix.SYS_SETREGID, unix.SYS_SETRESUID,
		unix.SYS_SETRESGID, unix.SYS_SETGROUPS, unix.SYS_SETSID, unix.SYS_SETPGID:
		return errnoResult(unix.EPERM), true
	case unix.SYS_UNAME:
		return ret(0, t.uname(a[0])), true
	case unix.SYS_GETRANDOM:
		return ret(t.getrandom(a[0], a[1], uint(a[2]))), true
	case unix.SYS_PRLIMIT64:
		return ret(0, t.prlimit(int(a[0]), int(a[1]), a[2], a[3])), true
	case unix.SYS_GETRLIMIT:
		return ret(0, t.prlimit(0, int(a[0]), 0, a[1])), true
	case unix.SYS_SETRLIMIT:
		return errnoResult(unix.EPERM), true
	case unix.SYS_GETRUSAGE:
		return ret(0, t.getrusage(a[1])), true
	case unix.SYS_SYSINFO:
		return ret(0, t.sysinfo(a[0])), true
	case unix.SYS_PRCTL:
		return ret(t.prctl(int(a[0]), a[1])), true
	case unix.SYS_WAIT4, unix.SYS_WAITID:
		return errnoResult(unix.ECHILD), true
	}
	return 0, false
}

// Guest memory helpers. Any fault is EFAULT, as copy_from_user/copy_to_user give.

func (t *thread) readMem(addr, n uint64) ([]byte, unix.Errno) {
	if n > 1<<30 {
		return nil, unix.EINVAL
	}
	b := make([]byte, n)
	if _, err := t.vm.hv.ReadAt(b, addr); err != nil {
		return nil, unix.EFAULT
	}
	t.vm.stats.copiedOut.Add(int64(n))
	return b, 0
}

func (t *thread) writeMem(addr uint64, b []byte) unix.Errno {
	if _, err := t.vm.hv.WriteAt(b, addr); err != nil {
		return unix.EFAULT
	}
	t.vm.stats.copiedIn.Add(int64(len(b)))
	return 0
}

func (t *thread) readU64(addr uint64) (uint64, unix.Errno) {
	b, e := t.readMem(addr, 8)
	if e != 0 {
		return 0, e
	}
	return binary.LittleEndian.Uint64(b), 0
}

func (t *thread) writeU64(addr, v uint64) unix.Errno {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return t.writeMem(addr, b[:])
}

func (t *thread) writeU32(addr uint64, v uint32) unix.Errno {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	return t.writeMem(addr, b[:])
}

// readString reads a NUL-terminated string of at most max bytes (ENAMETOOLONG past it).
func (t *thread) readString(addr uint64, max int) (string, unix.Errno) {
	var out []byte
	var chunk [256]byte
	for len(out) <= max {
		// Read up to the end of the page so an unmapped next page is no fault.
		n := min(uint64(len(chunk)), pageSize-addr%pageSize)
		if _, err := t.vm.hv.ReadAt(chunk[:n], addr); err != nil {
			return "", unix.EFAULT
		}
		for i := uint64(0); i < n; i++ {
			if chunk[i] == 0 {
				out = append(out, chunk[:i]...)
				if len(out) > max {
					return "", unix.ENAMETOOLONG
				}
				return string(out), 0
			}
		}
		out = append(out, chunk[:n]...)
		addr += n
	}
	return "", unix.ENAMETOOLONG
}

// readTimespec reads a struct timespec.
func (t *thread) readTimespec(addr uint64) (sec, nsec int64, e unix.Errno) {
	b, e := t.readMem(addr, 16)
	if e != 0 {
		return 0, 0, e
	}
	sec, nsec = int64(binary.LittleEndian.Uint64(b)), int64(binary.LittleEndian.Uint64(b[8:]))
	if sec < 0 || nsec < 0 || nsec >= 1e9 {
		return 0, 0, unix.EINVAL
	}
	return sec, nsec, 0
}

// timespecDuration converts a valid timespec to a Duration, saturating: a guest may ask
// for any number of seconds, and an overflow would turn a wait of centuries into none.
func timespecDuration(sec, nsec int64) time.Duration {
	const maxSec = int64(math.MaxInt64 / time.Second)
	if sec >= maxSec {
		return math.MaxInt64
	}
	return time.Duration(sec)*time.Second + time.Duration(nsec)
}

func hex(v uint64) string { return fmt.Sprintf("%012x", v) }
