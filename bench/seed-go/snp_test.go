package main

import (
	"bytes"
	"context"
	"reflect"
	"sync"
	"testing"
	"time"
)

// The request of design.md's example, as grpc-java and prost encode it.
var example = []byte("\x0a\x07default\x12\x0ddemo-provider\x1a\x21org.apache.dubbo.demo.DemoService")

func TestCodecMatchesProto3Bytes(t *testing.T) {
	req := ServiceMappingRequest{
		Namespace:       "default",
		ApplicationName: "demo-provider",
		InterfaceNames:  []string{"org.apache.dubbo.demo.DemoService"},
	}
	if got := req.Marshal(); !bytes.Equal(got, example) {
		t.Fatalf("encoded %q, want %q", got, example)
	}
	var back ServiceMappingRequest
	// An unknown varint field (9) is skipped.
	if err := back.Unmarshal(append(append([]byte{}, example...), 0x48, 0x01)); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, req) {
		t.Fatalf("decoded %+v, want %+v", back, req)
	}
	if err := back.Unmarshal([]byte{0x0a, 0x09, 'x'}); err == nil {
		t.Fatal("a truncated string decoded")
	}
}

func TestSeedNames(t *testing.T) {
	for in, want := range map[string]string{
		"org.apache.dubbo.demo.DemoService": "org-apache-dubbo-demo-demoservice",
		"com.example.Outer$Inner":           "com-example-outer$inner",
	} {
		if got := seedName(in); got != want {
			t.Errorf("seedName(%q) = %q, want %q", in, got, want)
		}
	}
}

// The debounce loop merges a burst into one push, and pushes a steady stream at most
// every debounceMax (one push in flight).
func TestDebounceMergesAndCapsTheWait(t *testing.T) {
	s := newSnp(nil, 100*time.Millisecond, time.Second, true)
	var mu sync.Mutex
	var pushes []*registerRequest
	var at []time.Time
	stop := make(chan struct{})
	defer close(stop)
	go s.debounce(stop, func(r *registerRequest) {
		mu.Lock()
		defer mu.Unlock()
		pushes = append(pushes, r)
		at = append(at, time.Now())
	})
	call := func(app, iface string) {
		_, _ = s.RegisterServiceAppMapping(context.Background(), &ServiceMappingRequest{
			Namespace: "ns", ApplicationName: app, InterfaceNames: []string{iface},
		})
	}
	start := time.Now()
	for i := 0; i < 5; i++ {
		call("a", "I1")
		call("b", "I2")
	}
	time.Sleep(400 * time.Millisecond)
	mu.Lock()
	if len(pushes) != 1 {
		t.Fatalf("%d pushes after a burst, want 1", len(pushes))
	}
	if d := at[0].Sub(start); d < 190*time.Millisecond {
		t.Fatalf("first push after %v, want >= 200 ms", d)
	}
	want := map[configKey]map[string]struct{}{
		{Name: "I1", Namespace: "ns"}: {"a": {}},
		{Name: "I2", Namespace: "ns"}: {"b": {}},
	}
	if !reflect.DeepEqual(pushes[0].ConfigsUpdated, want) {
		t.Fatalf("pushed %v, want %v", pushes[0].ConfigsUpdated, want)
	}
	mu.Unlock()

	// A call every 20 ms for 1.5 s: never quiet, so the maximum forces a push.
	start = time.Now()
	for time.Since(start) < 1500*time.Millisecond {
		call("c", "I3")
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(pushes) < 2 {
		t.Fatalf("no push within 1.5 s of steady calls")
	}
	if d := at[1].Sub(start); d < 950*time.Millisecond || d > 1300*time.Millisecond {
		t.Fatalf("forced push after %v, want about 1 s", d)
	}
}
