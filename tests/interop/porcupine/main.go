// Command porcupine-check reads a history of registration-entry operations recorded by
// ward's randomized fault test and checks, with porcupine, that it is linearizable when each
// entry ID is a register: create, update and delete change it, get reads it.
//
// Usage: porcupine-check -history history.json [-visualize out.html] [-timeout 120s]
//
// Exit status: 0 linearizable, 1 not linearizable (the visualization is written when asked),
// 2 bad usage or input, 3 the check ran out of time.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// op is one recorded call as the test writes it.
type op struct {
	Client  int     `json:"client"`
	Replica int     `json:"replica"`
	Key     string  `json:"key"`
	Kind    string  `json:"op"` // create, update, delete, get
	Value   string  `json:"value"`
	Call    int64   `json:"call"`
	Return  *int64  `json:"return"` // null: the outcome is unknown
	Outcome string  `json:"outcome"`
	Read    *string `json:"read"` // get only: the value read, null when absent
}

type input struct {
	Key   string
	Kind  string
	Value string
}

type output struct {
	Outcome string // ok, exists, notfound, unknown (writes); read (get)
	Read    string // get: the value read, "" when absent
}

// step applies one operation to the register's value ("" means no entry).
func step(state, in, out interface{}) (bool, interface{}) {
	s := state.(string)
	i := in.(input)
	o := out.(output)
	switch i.Kind {
	case "create":
		switch o.Outcome {
		case "ok":
			return s == "", i.Value
		case "exists":
			return s != "", s
		case "unknown":
			if s == "" {
				return true, i.Value
			}
			return true, s
		}
	case "update":
		switch o.Outcome {
		case "ok":
			return s != "", i.Value
		case "notfound":
			return s == "", s
		case "unknown":
			if s != "" {
				return true, i.Value
			}
			return true, s
		}
	case "delete":
		switch o.Outcome {
		case "ok":
			return s != "", ""
		case "notfound":
			return s == "", s
		case "unknown":
			return true, ""
		}
	case "get":
		return s == o.Read, s
	}
	return false, s
}

func model() porcupine.Model {
	return porcupine.Model{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[string][]porcupine.Operation{}
			for _, o := range history {
				k := o.Input.(input).Key
				byKey[k] = append(byKey[k], o)
			}
			keys := make([]string, 0, len(byKey))
			for k := range byKey {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			out := make([][]porcupine.Operation, 0, len(keys))
			for _, k := range keys {
				out = append(out, byKey[k])
			}
			return out
		},
		Init: func() interface{} { return "" },
		Step: step,
		Equal: func(a, b interface{}) bool {
			return a.(string) == b.(string)
		},
		DescribeOperation: func(in, out interface{}) string {
			i := in.(input)
			o := out.(output)
			switch i.Kind {
			case "get":
				if o.Read == "" {
					return fmt.Sprintf("get(%s) -> absent", i.Key)
				}
				return fmt.Sprintf("get(%s) -> %s", i.Key, o.Read)
			case "delete":
				return fmt.Sprintf("delete(%s) -> %s", i.Key, o.Outcome)
			default:
				return fmt.Sprintf("%s(%s, %s) -> %s", i.Kind, i.Key, i.Value, o.Outcome)
			}
		},
		DescribeState: func(state interface{}) string {
			if state.(string) == "" {
				return "absent"
			}
			return state.(string)
		},
		DescribeOperationMetadata: func(info interface{}) string {
			if info == nil {
				return ""
			}
			return info.(string)
		},
	}
}

func main() {
	historyPath := flag.String("history", "", "history JSON written by the fault test")
	visualize := flag.String("visualize", "", "write porcupine's HTML visualization here when the history is not linearizable")
	timeout := flag.Duration("timeout", 120*time.Second, "give up after this long (exit 3)")
	flag.Parse()
	if *historyPath == "" {
		fmt.Fprintln(os.Stderr, "porcupine-check: -history is required")
		os.Exit(2)
	}
	raw, err := os.ReadFile(*historyPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porcupine-check: %v\n", err)
		os.Exit(2)
	}
	var ops []op
	if err := json.Unmarshal(raw, &ops); err != nil {
		fmt.Fprintf(os.Stderr, "porcupine-check: %s: %v\n", *historyPath, err)
		os.Exit(2)
	}
	history := make([]porcupine.Operation, 0, len(ops))
	unknown := 0
	for _, o := range ops {
		ret := int64(math.MaxInt64)
		if o.Return != nil {
			ret = *o.Return
		} else {
			unknown++
		}
		out := output{Outcome: o.Outcome}
		if o.Read != nil {
			out.Read = *o.Read
		}
		history = append(history, porcupine.Operation{
			ClientId: o.Client,
			Input:    input{Key: o.Key, Kind: o.Kind, Value: o.Value},
			Call:     o.Call,
			Output:   out,
			Return:   ret,
			Metadata: fmt.Sprintf("client %d via replica %d", o.Client, o.Replica),
		})
	}
	m := model()
	result, info := porcupine.CheckOperationsVerbose(m, history, *timeout)
	fmt.Printf("porcupine-check: %d operations (%d with unknown outcome): %s\n", len(history), unknown, result)
	switch result {
	case porcupine.Ok:
		return
	case porcupine.Illegal:
		if *visualize != "" {
			if err := porcupine.VisualizePath(m, info, *visualize); err != nil {
				fmt.Fprintf(os.Stderr, "porcupine-check: visualization: %v\n", err)
			} else {
				fmt.Printf("porcupine-check: visualization written to %s\n", *visualize)
			}
		}
		os.Exit(1)
	default:
		os.Exit(3)
	}
}
