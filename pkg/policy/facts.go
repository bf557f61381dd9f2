package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/gabriel-vasile/mimetype"
)

// ErrNotRegular is returned by Decide when a rule needs the content of a path that is not
// a regular file (a directory, FIFO, device or socket).
var ErrNotRegular = errors.New("not a regular file")

// sniffLen is how much of a file content sniffing reads; mimetype's default limit.
const sniffLen = 3072

// DefaultCacheEntries bounds a FactCache whose Config leaves MaxEntries zero.
const DefaultCacheEntries = 16384

// factKey identifies one version of one file: the same inode with the same size and
// modification and change times has the same content. ctime changes on every write and
// cannot be set from user space, so a rewrite that restores mtime is still noticed.
type factKey struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // nanoseconds
}

type factEntry struct {
	contentType string // "" until sniffed
	sha256      string // "" until hashed
}

// FactCache remembers content facts (sniffed content type, SHA-256) of files keyed by
// (device, inode, size, mtime, ctime), so repeated decisions about an unchanged file read
// nothing. A FactCache is safe for concurrent use and can be shared by successive policies
// (a Store does this across reloads).
type FactCache struct {
	max int

	mu      sync.Mutex
	entries map[factKey]*factEntry // guarded by mu

	chains   sync.Map // content type -> *typeChain
	nChains  atomic.Int64
	origins  sync.Map // origin URL -> originInfo
	nOrigins atomic.Int64
}

// NewFactCache returns a cache holding at most maxEntries files (DefaultCacheEntries if
// maxEntries <= 0). When full, an arbitrary entry is evicted.
func NewFactCache(maxEntries int) *FactCache {
	if maxEntries <= 0 {
		maxEntries = DefaultCacheEntries
	}
	return &FactCache{max: maxEntries, entries: make(map[factKey]*factEntry)}
}

// Len returns the number of files in the cache.
func (c *FactCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

func (c *FactCache) get(k factKey) (factEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	if !ok {
		return factEntry{}, false
	}
	return *e, true
}

func (c *FactCache) put(k factKey, ct, sum string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	if !ok {
		if len(c.entries) >= c.max {
			for old := range c.entries {
				delete(c.entries, old)
				break
			}
		}
		e = &factEntry{}
		c.entries[k] = e
	}
	if ct != "" {
		e.contentType = ct
	}
	if sum != "" {
		e.sha256 = sum
	}
}

// typeChain is a sniffed content type with its ancestors in the sniffer's type tree, and
// the "major/*" wildcard of each, precomputed so that matching allocates nothing.
type typeChain struct {
	types []string // the type first, then its ancestors
	wild  []string // wild[i] is the "major/*" of types[i]
}

// maxChains bounds the memoized type chains and parsed origins.
const maxChains = 4096

// chain returns the content type and its ancestors, without the generic roots
// application/octet-stream and text/plain (a shell script is text/x-shellscript, and a
// rule for text/plain does not match it).
func (c *FactCache) chain(ct string) *typeChain {
	if v, ok := c.chains.Load(ct); ok {
		return v.(*typeChain)
	}
	tc := &typeChain{types: []string{ct}}
	if m := mimetype.Lookup(ct); m != nil {
		for p := m.Parent(); p != nil; p = p.Parent() {
			s := baseType(p.String())
			if s == "application/octet-stream" || s == "text/plain" {
				break
			}
			tc.types = append(tc.types, s)
		}
	}
	for _, t := range tc.types {
		major, _, _ := strings.Cut(t, "/")
		tc.wild = append(tc.wild, major+"/*")
	}
	if c.nChains.Add(1) < maxChains {
		c.chains.Store(ct, tc)
	}
	return tc
}

// origin parses an origin URL, memoized: the same few origins are decided again and again.
func (c *FactCache) origin(raw string) originInfo {
	if v, ok := c.origins.Load(raw); ok {
		return v.(originInfo)
	}
	o := parseOrigin(raw)
	if c.nOrigins.Add(1) < maxChains {
		c.origins.Store(raw, o)
	}
	return o
}

// baseType strips parameters such as "; charset=utf-8" from a MIME type.
func baseType(s string) string {
	if i := strings.IndexByte(s, ';'); i >= 0 {
		s = s[:i]
	}
	return lowerASCII(strings.TrimSpace(s))
}

func keyOf(fi os.FileInfo) (factKey, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return factKey{}, false
	}
	return factKey{
		dev:   uint64(st.Dev),
		ino:   st.Ino,
		size:  st.Size,
		mtime: st.Mtim.Nano(),
		ctime: st.Ctim.Nano(),
	}, true
}

// SniffContentType returns the MIME type of the content of r (which it reads up to 3 KiB
// of), without parameters: for example "application/pdf", "application/x-executable",
// "text/x-shellscript" or "text/plain".
func SniffContentType(r io.Reader) (string, error) {
	buf := make([]byte, sniffLen)
	n, err := io.ReadFull(r, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", err
	}
	return baseType(mimetype.Detect(buf[:n]).String()), nil
}

// facts are the content facts of the request's file, looked up at most once per decision.
type facts struct {
	statDone bool
	statErr  error
	fi       os.FileInfo
	key      factKey
	haveKey  bool
	cached   factEntry
}

func (e *evalCtx) stat() error {
	f := &e.facts
	if f.statDone {
		return f.statErr
	}
	f.statDone = true
	var fi os.FileInfo
	var err error
	if e.req.File != nil {
		fi, err = e.req.File.Stat()
	} else {
		fi, err = os.Stat(e.path)
	}
	if err != nil {
		f.statErr = fmt.Errorf("policy: content facts of %s: %w", e.path, err)
		return f.statErr
	}
	if !fi.Mode().IsRegular() {
		f.statErr = fmt.Errorf("policy: content facts of %s: %w", e.path, ErrNotRegular)
		return f.statErr
	}
	f.fi = fi
	f.key, f.haveKey = keyOf(fi)
	if f.haveKey {
		f.cached, _ = e.cache.get(f.key)
	}
	return nil
}

// size returns the file size, or false after recording an error.
func (e *evalCtx) size() (int64, bool) {
	if e.req.Size > 0 {
		return e.req.Size, true
	}
	if err := e.stat(); err != nil {
		e.fail(err)
		return 0, false
	}
	return e.facts.fi.Size(), true
}

// content is the file's content for sniffing or hashing, with the key of the version it is.
type content struct {
	r     io.Reader
	key   factKey
	file  File   // Request.File, or nil
	close func() // releases what open took
}

// open returns the content of the file: Request.File read from offset 0 with ReadAt (its
// offset is left alone), or else the file at the path, opened now and checked to be a
// regular file.
func (e *evalCtx) open() (*content, error) {
	if f := e.req.File; f != nil {
		fi, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("policy: content facts of %s: %w", e.path, err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("policy: content facts of %s: %w", e.path, ErrNotRegular)
		}
		k, _ := keyOf(fi)
		return &content{r: io.NewSectionReader(f, 0, math.MaxInt64), key: k, file: f, close: func() {}}, nil
	}
	fh, err := os.OpenFile(e.path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("policy: content facts of %s: %w", e.path, err)
	}
	fi, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, fmt.Errorf("policy: content facts of %s: %w", e.path, err)
	}
	if !fi.Mode().IsRegular() {
		fh.Close()
		return nil, fmt.Errorf("policy: content facts of %s: %w", e.path, ErrNotRegular)
	}
	k, _ := keyOf(fi)
	return &content{r: fh, key: k, close: func() { fh.Close() }}, nil
}

// remember caches facts read from c, unless the file changed while they were read (its
// key is no longer the one read at the start): the facts then belong to no version.
func (e *evalCtx) remember(c *content, ct, sum string) {
	k := c.key
	if c.file != nil {
		fi, err := c.file.Stat()
		if err != nil {
			return
		}
		if k2, _ := keyOf(fi); k2 != k {
			return
		}
	}
	e.cache.put(k, ct, sum)
}

// contentType returns the sniffed content type and its ancestors.
func (e *evalCtx) contentType() (*typeChain, bool) {
	if e.ctChain != nil {
		return e.ctChain, true
	}
	ct := baseType(e.req.ContentType)
	if ct == "" {
		if err := e.stat(); err != nil {
			e.fail(err)
			return nil, false
		}
		ct = e.facts.cached.contentType
	}
	if ct == "" {
		c, err := e.open()
		if err != nil {
			e.fail(err)
			return nil, false
		}
		ct, err = SniffContentType(c.r)
		c.close()
		if err != nil {
			e.fail(fmt.Errorf("policy: sniffing %s: %w", e.path, err))
			return nil, false
		}
		e.remember(c, ct, "")
	}
	e.ctChain = e.cache.chain(ct)
	return e.ctChain, true
}

// sha256 returns the lower-case hex SHA-256 of the content.
func (e *evalCtx) sha256() (string, bool) {
	if e.sum != "" {
		return e.sum, true
	}
	if s := e.req.SHA256; s != "" {
		e.sum = lowerASCII(s)
		return e.sum, true
	}
	if err := e.stat(); err != nil {
		e.fail(err)
		return "", false
	}
	if s := e.facts.cached.sha256; s != "" {
		e.sum = s
		return s, true
	}
	c, err := e.open()
	if err != nil {
		e.fail(err)
		return "", false
	}
	defer c.close()
	h := sha256.New()
	if _, err := io.Copy(h, c.r); err != nil {
		e.fail(fmt.Errorf("policy: hashing %s: %w", e.path, err))
		return "", false
	}
	e.sum = hex.EncodeToString(h.Sum(nil))
	e.remember(c, "", e.sum)
	return e.sum, true
}
