// aws-sdk-probe sends the AWS API calls spire-server v1.13.3's aws_iid plugin makes, with the
// AWS SDK for Go v2 at the versions SPIRE pins, configured as SPIRE configures it (region from
// the instance identity document, static credentials from AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY without a session token, endpoints from the SDK's own variables such as
// AWS_ENDPOINT_URL). It prints one line per call: "ok" or "error: " and the SDK's error text,
// which spire-server wraps in its refusal messages.
//
// Usage: aws-sdk-probe describe-instances REGION INSTANCE_ID
//        aws-sdk-probe get-instance-profile REGION PROFILE_NAME
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/iam"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: aws-sdk-probe describe-instances|get-instance-profile REGION ID")
		os.Exit(2)
	}
	op, region, id := os.Args[1], os.Args[2], os.Args[3]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conf, err := config.LoadDefaultConfig(ctx,
		config.WithRegion(region),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(
			os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), "")),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loading the AWS configuration:", err)
		os.Exit(1)
	}
	switch op {
	case "describe-instances":
		_, err = ec2.NewFromConfig(conf).DescribeInstances(ctx, &ec2.DescribeInstancesInput{
			InstanceIds: []string{id},
			Filters: []ec2types.Filter{{
				Name:   aws.String("instance-state-name"),
				Values: []string{"pending", "running"},
			}},
		})
	case "get-instance-profile":
		_, err = iam.NewFromConfig(conf).GetInstanceProfile(ctx, &iam.GetInstanceProfileInput{
			InstanceProfileName: aws.String(id),
		})
	default:
		fmt.Fprintln(os.Stderr, "unknown operation", op)
		os.Exit(2)
	}
	if err != nil {
		fmt.Println("error: " + err.Error())
		return
	}
	fmt.Println("ok")
}
