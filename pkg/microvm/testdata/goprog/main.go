// Command goprog exercises the Go runtime inside a micro VM: goroutines, channels,
// timers, file reads, crypto/sha256 and image/png. It prints a deterministic summary.
package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"sync"
	"time"
)

func main() {
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Fan out hashing over goroutines and collect through a channel.
	const workers = 8
	sums := make(chan [32]byte, workers)
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			h := sha256.New()
			h.Write(data)
			fmt.Fprintf(h, "%d", i)
			var s [32]byte
			copy(s[:], h.Sum(nil))
			sums <- s
		}(i)
	}
	wg.Wait()
	close(sums)
	var x [32]byte
	for s := range sums {
		for i := range x {
			x[i] ^= s[i]
		}
	}
	// Timers and a ticker.
	timer := time.NewTimer(5 * time.Millisecond)
	ticks := 0
	tk := time.NewTicker(time.Millisecond)
	for ticks < 3 {
		<-tk.C
		ticks++
	}
	tk.Stop()
	<-timer.C
	time.Sleep(2 * time.Millisecond)
	// PNG round trip.
	img := image.NewRGBA(image.Rect(0, 0, 64, 48))
	for y := 0; y < 48; y++ {
		for xx := 0; xx < 64; xx++ {
			img.Set(xx, y, color.RGBA{uint8(xx * 4), uint8(y * 5), data[(xx+y)%len(data)], 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		panic(err)
	}
	back, err := png.Decode(bytes.NewReader(buf.Bytes()))
	if err != nil {
		panic(err)
	}
	r, g, b, _ := back.At(10, 20).RGBA()
	if err := os.WriteFile("/output/out.png", buf.Bytes(), 0o644); err != nil {
		panic(err)
	}
	fmt.Printf("sha256 %x\nfile %x\nticks %d\npixel %d %d %d\nbounds %v\n", x, sha256.Sum256(data), ticks, r>>8, g>>8, b>>8, back.Bounds())
}
