package main

// The seed server's algorithm (/work/shared/seeds/000_*: the Snp server of Apache
// dubbo-go-pixiu's Istio fork), as a peer to measure snp against:
//
//   - each call is turned into a request {(namespace, interface) -> {application}} and put
//     on a channel of 10; the call is answered OK at once;
//   - one debounce loop merges requests: the first arms time.After(200ms); a push happens
//     when 100 ms passed without a request or 1 s since the first, and only when no push
//     is in flight (a push that ends re-checks at once);
//   - a push walks the keys one by one: Get, then Create (not found) or a union and Update,
//     up to 3 tries per key with no pause, then the key is dropped (logged);
//   - objects are named lower(interface) with '.' -> '-' and labelled interface=<name>, so
//     interfaces whose name or label is invalid cannot be stored at all.
//
// The only additions are counters (tries, drops) printed to the log, for the benchmark to
// read next to the API server's own figures.

import (
	"context"
	"log"
	"strings"
	"sync/atomic"
	"time"

	apierror "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// configKey is the seed's model.ConfigKey (kind left out: always ServiceNameMapping).
type configKey struct {
	Name      string // interface
	Namespace string
}

// registerRequest is the seed's RegisterRequest: applications per key.
type registerRequest struct {
	ConfigsUpdated map[configKey]map[string]struct{}
}

// Merge adds req's applications into r (r may be nil) and returns the merged request.
func (r *registerRequest) Merge(req *registerRequest) *registerRequest {
	if r == nil {
		return req
	}
	for key, apps := range req.ConfigsUpdated {
		if _, ok := r.ConfigsUpdated[key]; !ok {
			r.ConfigsUpdated[key] = make(map[string]struct{})
		}
		for app := range apps {
			r.ConfigsUpdated[key][app] = struct{}{}
		}
	}
	return r
}

// counters of one process, logged by the benchmark's readers.
type counters struct {
	calls   atomic.Int64 // registration calls answered
	pushes  atomic.Int64 // debounced pushes
	tries   atomic.Int64 // tryRegister calls
	failed  atomic.Int64 // tryRegister calls that failed
	dropped atomic.Int64 // keys given up after 3 tries
}

// snp is the server: a channel of requests and the client of the mappings.
type snp struct {
	client         *mappingsClient
	queue          chan *registerRequest
	debounceAfter  time.Duration
	debounceMax    time.Duration
	enableDebounce bool
	tries          int
	stats          counters
}

func newSnp(client *mappingsClient, debounceAfter, debounceMax time.Duration, enableDebounce bool) *snp {
	return &snp{
		client:         client,
		queue:          make(chan *registerRequest, 10),
		debounceAfter:  debounceAfter,
		debounceMax:    debounceMax,
		enableDebounce: enableDebounce,
		tries:          3,
	}
}

// RegisterServiceAppMapping queues the call's keys and answers at once.
func (s *snp) RegisterServiceAppMapping(ctx context.Context, req *ServiceMappingRequest) (*ServiceMappingResponse, error) {
	r := &registerRequest{ConfigsUpdated: map[configKey]map[string]struct{}{}}
	for _, iface := range req.InterfaceNames {
		key := configKey{Name: iface, Namespace: req.Namespace}
		if _, ok := r.ConfigsUpdated[key]; !ok {
			r.ConfigsUpdated[key] = make(map[string]struct{})
		}
		r.ConfigsUpdated[key][req.ApplicationName] = struct{}{}
	}
	s.queue <- r
	s.stats.calls.Add(1)
	return &ServiceMappingResponse{}, nil
}

// start runs the debounce loop until stop is closed.
func (s *snp) start(stop <-chan struct{}) {
	go s.debounce(stop, s.push)
}

// push writes every key of req, each up to s.tries times, in the order the map gives.
func (s *snp) push(req *registerRequest) {
	s.stats.pushes.Add(1)
	for key, m := range req.ConfigsUpdated {
		var apps []string
		for app := range m {
			apps = append(apps, app)
		}
		stored := false
		for i := 0; i < s.tries; i++ {
			s.stats.tries.Add(1)
			if err := s.tryRegister(key.Namespace, key.Name, apps); err != nil {
				s.stats.failed.Add(1)
				log.Printf("register [%s/%s] failed: %v, try again later", key.Namespace, key.Name, err)
			} else {
				stored = true
				break
			}
		}
		if !stored {
			s.stats.dropped.Add(1)
			log.Printf("dropped [%s/%s] after %d tries", key.Namespace, key.Name, s.tries)
		}
	}
}

// debounce is the seed's loop: merge, wait for quiet or the maximum, one push in flight.
func (s *snp) debounce(stop <-chan struct{}, pushFn func(*registerRequest)) {
	var timeChan <-chan time.Time
	var startDebounce, lastUpdate time.Time
	debounced := 0
	var req *registerRequest
	free := true
	freeCh := make(chan struct{}, 1)

	push := func(r *registerRequest) {
		pushFn(r)
		freeCh <- struct{}{}
	}
	pushWorker := func() {
		eventDelay := time.Since(startDebounce)
		quiet := time.Since(lastUpdate)
		if eventDelay >= s.debounceMax || quiet >= s.debounceAfter {
			if req != nil {
				free = false
				go push(req)
				req = nil
				debounced = 0
			}
		} else {
			timeChan = time.After(s.debounceAfter - quiet)
		}
	}

	for {
		select {
		case <-freeCh:
			free = true
			pushWorker()
		case r := <-s.queue:
			if !s.enableDebounce {
				go push(r)
				req = nil
				continue
			}
			lastUpdate = time.Now()
			if debounced == 0 {
				timeChan = time.After(200 * time.Millisecond)
				startDebounce = lastUpdate
			}
			debounced++
			req = req.Merge(r)
		case <-timeChan:
			if free {
				pushWorker()
			}
		case <-stop:
			return
		}
	}
}

// seedName is the seed's object name: lower(interface) with '.' -> '-'.
func seedName(iface string) string {
	return strings.ToLower(strings.ReplaceAll(iface, ".", "-"))
}

// tryRegister stores apps for the interface: created, already there, or a union written
// with Update (which fails on a 409 if another writer changed the object meanwhile).
func (s *snp) tryRegister(namespace, iface string, apps []string) error {
	obj, created, err := s.getOrCreate(namespace, iface, apps)
	if created {
		return nil
	}
	if err != nil {
		return err
	}
	before := len(obj.Spec.ApplicationNames)
	union := make(map[string]struct{}, before)
	for _, a := range obj.Spec.ApplicationNames {
		union[a] = struct{}{}
	}
	for _, a := range apps {
		union[a] = struct{}{}
	}
	if len(union) == before {
		return nil
	}
	merged := make([]string, 0, len(union))
	for a := range union {
		merged = append(merged, a)
	}
	obj.Spec.ApplicationNames = merged
	if _, err := s.client.ServiceNameMappings(namespace).Update(context.Background(), obj, metav1.UpdateOptions{}); err != nil {
		return wrap(err, "update failed")
	}
	return nil
}

// getOrCreate gets the object, or creates it with apps. As in the seed, a create that
// fails with anything but AlreadyExists returns the (empty) object the client gave back
// and no error; the Update that follows then fails.
func (s *snp) getOrCreate(namespace, iface string, apps []string) (*ServiceNameMapping, bool, error) {
	ctx := context.TODO()
	name := seedName(iface)
	c := s.client.ServiceNameMappings(namespace)
	obj, err := c.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if !apierror.IsNotFound(err) {
			return nil, false, wrap(err, "tryRegister get snp error")
		}
		obj, err = c.Create(ctx, &ServiceNameMapping{
			ObjectMeta: metav1.ObjectMeta{
				Name:      name,
				Namespace: namespace,
				Labels:    map[string]string{"interface": iface},
			},
			Spec: ServiceNameMappingSpec{InterfaceName: iface, ApplicationNames: apps},
		}, metav1.CreateOptions{})
		if err == nil {
			return obj, true, nil
		}
		if apierror.IsAlreadyExists(err) {
			obj, err = c.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return nil, false, wrap(err, "tryRegister retry get snp error")
			}
		}
	}
	return obj, false, nil
}

type wrapped struct {
	msg string
	err error
}

func (w *wrapped) Error() string { return w.msg + ": " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }

func wrap(err error, msg string) error { return &wrapped{msg: msg, err: err} }
