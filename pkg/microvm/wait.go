package microvm

import (
	"encoding/binary"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// pollHub wakes every waiter whenever the readiness of any pipe, eventfd or stdin may have
// changed. Waiters take the channel before checking their condition, so no wake-up is lost.
type pollHub struct {
	mu sync.Mutex    // guards ch
	ch chan struct{} // closed and replaced by notify
}

func (h *pollHub) wait() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ch == nil {
		h.ch = make(chan struct{})
	}
	return h.ch
}

func (h *pollHub) notify() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ch != nil {
		close(h.ch)
		h.ch = nil
	}
}

// block waits until ch is closed, the deadline passes (zero: none) or the VM stops. It
// returns ETIMEDOUT or EINTR in the last two cases.
func (vm *VM) block(ch <-chan struct{}, deadline time.Time) unix.Errno {
	var timer <-chan time.Time
	if !deadline.IsZero() {
		d := time.Until(deadline)
		if d <= 0 {
			return unix.ETIMEDOUT
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-ch:
		return 0
	case <-timer:
		return unix.ETIMEDOUT
	case <-vm.done:
		return unix.EINTR
	}
}

// futexWaiter is one thread blocked in FUTEX_WAIT.
type futexWaiter struct {
	addr   uint64
	bitset uint32
	ch     chan struct{}
}

// futexTable implements private futexes: every guest thread shares one address space.
type futexTable struct {
	mu      sync.Mutex // guards waiters
	waiters []*futexWaiter
}

func (ft *futexTable) wait(vm *VM, addr uint64, val uint32, bitset uint32, deadline time.Time) unix.Errno {
	if addr%4 != 0 {
		return unix.EINVAL
	}
	if bitset == 0 {
		return unix.EINVAL
	}
	var b [4]byte
	ft.mu.Lock()
	if _, err := vm.hv.ReadAt(b[:], addr); err != nil {
		ft.mu.Unlock()
		return unix.EFAULT
	}
	if binary.LittleEndian.Uint32(b[:]) != val {
		ft.mu.Unlock()
		return unix.EAGAIN
	}
	w := &futexWaiter{addr: addr, bitset: bitset, ch: make(chan struct{})}
	ft.waiters = append(ft.waiters, w)
	ft.mu.Unlock()
	e := vm.block(w.ch, deadline)
	if e != 0 {
		ft.mu.Lock()
		removed := ft.remove(w)
		ft.mu.Unlock()
		if !removed {
			return 0 // woken concurrently with the timeout: report the wake
		}
	}
	return e
}

func (ft *futexTable) remove(w *futexWaiter) bool {
	for i, x := range ft.waiters {
		if x == w {
			ft.waiters = append(ft.waiters[:i], ft.waiters[i+1:]...)
			return true
		}
	}
	return false
}

func (ft *futexTable) wake(addr uint64, n int, bitset uint32) int {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	woken := 0
	out := ft.waiters[:0]
	for _, w := range ft.waiters {
		if woken < n && w.addr == addr && w.bitset&bitset != 0 {
			close(w.ch)
			woken++
			continue
		}
		out = append(out, w)
	}
	ft.waiters = out
	return woken
}

// requeue wakes n waiters on addr and moves up to m others to addr2.
func (ft *futexTable) requeue(addr, addr2 uint64, n, m int) int {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	woken, moved := 0, 0
	out := ft.waiters[:0]
	for _, w := range ft.waiters {
		if w.addr == addr {
			if woken < n {
				close(w.ch)
				woken++
				continue
			}
			if moved < m {
				w.addr = addr2
				moved++
			}
		}
		out = append(out, w)
	}
	ft.waiters = out
	return woken + moved
}

func (ft *futexTable) wakeAll() {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	for _, w := range ft.waiters {
		close(w.ch)
	}
	ft.waiters = nil
}
